"""The case grid: which model, variants and input shapes a sweep measures, in what order."""

from dataclasses import dataclass

from vggt.models.architecture import Architecture
from vggt.precision import Precision


@dataclass(frozen=True)
class SweepSettings:
    """The grid's axes and the number of warm-up and timed runs per case."""

    variants: tuple[str, ...]
    components: tuple[str, ...]
    frames: tuple[int, ...]
    batch: tuple[int, ...]
    image_sizes: tuple[tuple[int, int], ...]
    precisions: tuple[Precision, ...]
    warmup: int
    repeats: int


@dataclass(frozen=True)
class CaseGroup:
    """The variants of one configuration, measured together so their runs can interleave."""

    component: str
    frames: int
    batch: int
    height: int
    width: int
    precision: Precision
    variants: tuple[str, ...]
    architecture: Architecture

    @property
    def group_id(self) -> str:
        """Like the case ids, without the variant."""
        return (
            f"{self.component}-{self.precision.label}-b{self.batch}-f{self.frames}"
            f"-{self.height}x{self.width}-{self.architecture.tag()}"
        )

    def cases(self, split: "Split | None" = None) -> list["Case"]:
        """One case per variant, in the group's variant order; `split` for sequence parallel."""
        return [Case(self, variant, split) for variant in self.variants]

    def cost(self) -> float:
        """Rough forward FLOPs of all variants (the architecture's count), for ordering."""
        arch = self.architecture
        flops = arch.aggregator_flops(self.frames, self.height, self.width, self.batch)
        if self.component == "model":
            flops += arch.heads_flops(self.frames, self.height, self.width, self.batch)
        return flops * len(self.variants)


@dataclass(frozen=True)
class Split:
    """One rank's part of a sequence split over `world_size` ranks (`attention` across them;
    None at world size 1, where the rank runs the whole sequence alone as the reference)."""

    world_size: int
    rank: int
    attention: str | None

    @property
    def suffix(self) -> str:
        """`-ws1-r0`, `-ws2-ulysses-r1`: what a split adds to a case id."""
        scheme = f"-{self.attention}" if self.attention else ""
        return f"-ws{self.world_size}{scheme}-r{self.rank}"


def sequence_splits(world_size: int, attention: str) -> list[Split]:
    """Every rank's world-size-1 reference and its share of the split: the cases of one
    configuration in a sequence-parallel sweep."""
    ranks = range(world_size)
    return [Split(1, r, None) for r in ranks] + [Split(world_size, r, attention) for r in ranks]


@dataclass(frozen=True)
class Case:
    """One variant of a group: the unit that gets a record in the report."""

    group: CaseGroup
    variant: str
    split: Split | None = None

    @property
    def case_id(self) -> str:
        """Stable across runs and ranks; names every axis and the architecture."""
        group = self.group
        return (
            f"{group.component}-{self.variant}-{group.precision.label}-b{group.batch}"
            f"-f{group.frames}-{group.height}x{group.width}-{group.architecture.tag()}"
            f"{self.split.suffix if self.split else ''}"
        )


def build_groups(architecture: Architecture, settings: SweepSettings) -> list[CaseGroup]:
    """Every configuration of the grid, most expensive first (ties broken by group id)."""
    groups = [
        CaseGroup(
            component, frames, batch, height, width, precision, settings.variants, architecture
        )
        for component in settings.components
        for precision in settings.precisions
        for height, width in settings.image_sizes
        for batch in settings.batch
        for frames in settings.frames
    ]
    return sorted(groups, key=lambda group: (-group.cost(), group.group_id))

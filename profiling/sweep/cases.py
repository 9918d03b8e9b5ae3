"""The case grid: which model, variants and input shapes a sweep measures, in what order, and
in train mode what each case trains."""

from dataclasses import dataclass

from vggt.models.architecture import Architecture
from vggt.precision import Precision
from vggt.training.checkpointing import check_policy
from vggt.training.trainable import PARTS, PRESETS, parse_trainable

MODES = ("inference", "train")
# The parts a sweep can train: not the track head, since it passes no query points.
SWEEP_PARTS = tuple(part for part in PARTS if part != "track")
# What a train-mode case trains when --trainable is not given, per component.
DEFAULT_TRAINABLE = {"aggregator": "aggregator", "model": "unfrozen-aggregator"}
DEFAULT_CHECKPOINT = "blocks"
# A training step's cost against a forward's: backward about twice the forward, plus the
# recomputation of checkpointed blocks (for ordering the groups and the GPU evidence's plan).
TRAINING_COST = 4.0


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
    mode: str = "inference"
    trainable: str | None = None
    checkpoint: str = DEFAULT_CHECKPOINT


@dataclass(frozen=True)
class Training:
    """What a train-mode case trains (`vggt.training.trainable` parts) and what its forward
    keeps for backward (a `vggt.training.checkpointing` policy)."""

    parts: tuple[str, ...]
    checkpoint: str

    @property
    def trainable(self) -> str:
        """The parts as a preset's name when they are one, else joined by `+`."""
        preset = next((name for name, parts in PRESETS.items() if parts == self.parts), None)
        return preset or "+".join(self.parts)

    @property
    def suffix(self) -> str:
        """`-train-aggregator-blocks`: what training adds to group and case ids."""
        return f"-train-{self.trainable}-{self.checkpoint}"


def training_for(settings: SweepSettings, component: str) -> Training | None:
    """What `component`'s cases train in `settings` (None in inference mode): --trainable's
    parts, else the component's default; ValueError for parts the sweep cannot train."""
    if settings.mode != "train":
        return None
    spec = settings.trainable or DEFAULT_TRAINABLE[component]
    parts = parse_trainable(spec)
    if component == "aggregator" and parts != ("aggregator",):
        raise ValueError(
            f"--trainable {spec}: the component aggregator trains only 'aggregator' (the heads "
            "are part of --component model)"
        )
    if not set(parts) <= set(SWEEP_PARTS):
        raise ValueError(
            f"--trainable {spec}: the sweep runs no track head (it passes no query points)"
        )
    return Training(parts, check_policy(settings.checkpoint))


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
    training: Training | None = None

    @property
    def group_id(self) -> str:
        """Like the case ids, without the variant."""
        return (
            f"{self.component}-{self.precision.label}-b{self.batch}-f{self.frames}"
            f"-{self.height}x{self.width}-{self.architecture.tag()}{self.training_suffix}"
        )

    @property
    def training_suffix(self) -> str:
        """What training adds to the ids; empty in inference mode."""
        return self.training.suffix if self.training else ""

    def cases(self, split: "Split | None" = None) -> list["Case"]:
        """One case per variant, in the group's variant order; `split` for sequence parallel."""
        return [Case(self, variant, split) for variant in self.variants]

    def cost(self) -> float:
        """Rough forward FLOPs of all variants (the architecture's count), for ordering."""
        arch = self.architecture
        flops = arch.aggregator_flops(self.frames, self.height, self.width, self.batch)
        if self.component == "model":
            flops += arch.heads_flops(self.frames, self.height, self.width, self.batch)
        if self.training:
            flops *= TRAINING_COST
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
            f"{group.training_suffix}{self.split.suffix if self.split else ''}"
        )


def build_groups(architecture: Architecture, settings: SweepSettings) -> list[CaseGroup]:
    """Every configuration of the grid, most expensive first (ties broken by group id)."""
    groups = [
        CaseGroup(
            component,
            frames,
            batch,
            height,
            width,
            precision,
            settings.variants,
            architecture,
            training_for(settings, component),
        )
        for component in settings.components
        for precision in settings.precisions
        for height, width in settings.image_sizes
        for batch in settings.batch
        for frames in settings.frames
    ]
    return sorted(groups, key=lambda group: (-group.cost(), group.group_id))

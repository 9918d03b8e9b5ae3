"""Command-line options of profiling/run.py, checked before any work starts.

Every problem becomes a `UsageError` with one line of text; run.py prints it and exits 2.
"""

import argparse
import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from profiling.sweep.cases import (
    DEFAULT_TRAINABLE,
    MODES,
    SWEEP_PARTS,
    SweepSettings,
    training_for,
)
from profiling.sweep.presets import load_preset
from profiling.sweep.records import has_partial_results
from profiling.sweep.variants import load_variant_module, splits_sequences
from vggt.models.architecture import Architecture
from vggt.models.variants import COMPONENTS, get_variant
from vggt.parallel.launch import Launch, cuda_index
from vggt.parallel.sequence import ATTENTIONS, choose_attention
from vggt.precision import DTYPE_MODES, PRECISIONS, from_dtype, get_precision
from vggt.training.checkpointing import CHECKPOINT_POLICIES
from vggt.training.trainable import PRESETS

GPU_PRESET = "vggt-1b"
CPU_PRESET = "cpu-small"
REPORTS_DIR = Path("reports")
PARALLEL_MODES = ("cases", "sequence")
SWEEP_PRESETS = tuple(name for name, parts in PRESETS.items() if set(parts) <= set(SWEEP_PARTS))


class UsageError(Exception):
    """A bad command line; the message is one line."""


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Turn a ValueError of the block (an unknown preset, variant or dtype) into a UsageError."""
    try:
        yield
    except ValueError as error:
        raise UsageError(str(error)) from None


@dataclass(frozen=True)
class SweepConfig:
    """Everything a run needs, validated."""

    preset: str
    architecture: Architecture
    settings: SweepSettings
    out_dir: Path | None
    resume: bool
    memory_budget_gib: float | None
    device_type: str
    seed: int
    quiet: bool
    parallel: str = "cases"
    attention: str = "ulysses"

    def describe(self) -> dict:
        """The settings as plain values, for the report's environment section."""
        settings = self.settings
        return {
            "preset": self.preset,
            "architecture": dataclasses.asdict(self.architecture),
            "variants": list(settings.variants),
            "components": list(settings.components),
            "frames": list(settings.frames),
            "batch": list(settings.batch),
            "image_sizes": [f"{h}x{w}" for h, w in settings.image_sizes],
            "precisions": [p.label for p in settings.precisions],
            "warmup": settings.warmup,
            "repeats": settings.repeats,
            "memory_budget_gib": self.memory_budget_gib,
            "seed": self.seed,
            "parallel": self.parallel,
            "attention": self.attention if self.parallel == "sequence" else None,
            "mode": settings.mode,
            "trainable": self.trainables(),
            "checkpoint": settings.checkpoint if settings.mode == "train" else None,
        }

    def trainables(self) -> str | None:
        """What each component trains in train mode (`model: aggregator,camera,...`)."""
        if self.settings.mode != "train":
            return None
        parts = {c: training_for(self.settings, c).parts for c in self.settings.components}
        return "; ".join(f"{c}: {','.join(p)}" for c, p in parts.items())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The options; parse errors raise UsageError instead of exiting."""
    parser = _Parser(
        prog="profiling/run.py",
        description="Profile the full and VRAM-optimized VGGT aggregators over a case grid: "
        "inference forwards or, with --mode train, training steps. Launch with `torchrun "
        "--nproc_per_node=N profiling/run.py` to spread the cases over N ranks; plain "
        "`python profiling/run.py` runs one rank. Lists take commas.",
    )
    parser.add_argument(
        "--preset",
        help=f"a preset of profiling/sweep/presets/ (default: "
        f"{GPU_PRESET} with CUDA, {CPU_PRESET} without)",
    )
    parser.add_argument("--variants", help="variants to compare, e.g. full,optimized")
    parser.add_argument(
        "--variant-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE and call its register_variants() (repeatable)",
    )
    parser.add_argument("--component", help=f"what to run: {', '.join(COMPONENTS)}")
    parser.add_argument("--frames", help="frame counts, e.g. 1,8,32")
    parser.add_argument("--batch", help="batch sizes, e.g. 1,2")
    parser.add_argument("--image-size", help="HxW sizes (or N for NxN), e.g. 518x518,294x518")
    parser.add_argument(
        "--precision",
        help=f"precisions, e.g. autocast,bf16 ({', '.join(PRECISIONS)}; default: preset)",
    )
    parser.add_argument(
        "--dtype",
        help="earlier form of --precision: fp32, bf16, fp16, each optionally -cast or "
        "-autocast (bf16-cast is the precision bf16, bf16-autocast is autocast)",
    )
    parser.add_argument(
        "--dtype-mode",
        choices=DTYPE_MODES,
        help="with --dtype: how a bare bf16/fp16 applies (default: autocast)",
    )
    parser.add_argument("--warmup", type=int, help="warm-up runs per variant (default: preset)")
    parser.add_argument("--repeats", type=int, help="timed runs per variant (default: preset)")
    parser.add_argument("--out", type=Path, help="report folder (default: reports/<timestamp>)")
    parser.add_argument(
        "--resume", type=Path, metavar="OUT", help="continue the run in OUT, skipping its cases"
    )
    parser.add_argument(
        "--memory-budget",
        type=float,
        metavar="GiB",
        help="cap each rank's PyTorch CUDA caching allocator (reserved memory) at GiB, to "
        "emulate a smaller GPU; the CUDA context and other processes are not counted, so a "
        "real GPU of that size fits a little less",
    )
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and input")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--parallel",
        choices=PARALLEL_MODES,
        default="cases",
        help="cases: hand configurations to ranks; sequence: run each configuration split "
        "over all ranks, and alone on each rank for comparison (needs 2+ ranks and variants "
        "that can split a sequence: the preset's others are left out)",
    )
    parser.add_argument(
        "--attention",
        "--sp-attention",
        dest="attention",
        choices=tuple(ATTENTIONS),
        help="global attention across ranks with --parallel sequence (default: ulysses, ring "
        "when there are more ranks than heads; hybrid over several nodes of several ranks)",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="inference",
        help="inference: time and meter forwards; train: time and meter training steps "
        "(forward with the loss, backward, AdamW), each phase's peak memory and time apart, "
        "one variant's model at a time",
    )
    parser.add_argument(
        "--trainable",
        metavar="SPEC",
        help=f"with --mode train: what trains, a preset ({', '.join(SWEEP_PRESETS)}) or parts "
        f"from {', '.join(SWEEP_PARTS)} joined by commas (default: "
        + ", ".join(f"{spec} for --component {c}" for c, spec in DEFAULT_TRAINABLE.items())
        + ")",
    )
    parser.add_argument(
        "--checkpoint",
        choices=CHECKPOINT_POLICIES,
        help="with --mode train: what a forward keeps for backward: none (every activation), "
        "blocks (each block's input, the rest recomputed), selective (inputs and attention "
        "outputs) (default: blocks)",
    )
    return parser


def split_list(text: str) -> list[str]:
    """Comma-separated items, stripped, empty ones dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_counts(text: str, name: str) -> tuple[int, ...]:
    """Comma-separated whole numbers of at least 1."""
    values = []
    for item in split_list(text):
        if not item.isdigit() or int(item) < 1:
            raise UsageError(f"{name} must be whole numbers of at least 1, got {item!r}")
        values.append(int(item))
    if not values:
        raise UsageError(f"{name} must list at least one number, got {text!r}")
    return tuple(values)


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """`HxW` or `N` items (N meaning NxN)."""
    sizes = []
    for item in split_list(text):
        height, _, width = item.lower().partition("x")
        width = width or height
        if not (height.isdigit() and width.isdigit()):
            raise UsageError(f"image size must be HxW or N, got {item!r}")
        sizes.append((int(height), int(width)))
    if not sizes:
        raise UsageError(f"image size must list at least one HxW, got {text!r}")
    return tuple(sizes)


def check_sizes(sizes: Sequence[tuple[int, int]], patch_size: int) -> None:
    """UsageError unless both sides of every size are positive multiples of the patch."""
    for height, width in sizes:
        if height < patch_size or width < patch_size or height % patch_size or width % patch_size:
            raise UsageError(
                f"image size {height}x{width} is not a positive multiple of the patch size "
                f"{patch_size}"
            )


def resolve_device(requested: str) -> str:
    """`cuda` or `cpu`; `auto` picks CUDA when available."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was given but CUDA is not available")
    return requested


def check_writable(folder: Path) -> None:
    """Create `folder` and write a probe file in it; UsageError if either fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as error:
        raise UsageError(f"cannot write to the output folder {folder}: {error.strerror}") from None


def choose_out_dir(args: argparse.Namespace, attempt: int) -> tuple[Path | None, bool]:
    """The output folder (None for the default) and whether earlier results are resumed."""
    if args.resume is not None:
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise UsageError("--out and --resume name different folders; give one of them")
        if not args.resume.is_dir():
            raise UsageError(f"--resume {args.resume}: no such folder")
        check_writable(args.resume)
        return args.resume, True
    if args.out is None:
        check_writable(REPORTS_DIR)
        return None, attempt > 0
    check_writable(args.out)
    if attempt == 0 and has_partial_results(args.out):
        raise UsageError(
            f"{args.out} holds results of an earlier run; pass --resume {args.out} to "
            "continue it, or choose another --out"
        )
    return args.out, attempt > 0


def precision_changes(args: argparse.Namespace, settings: SweepSettings) -> tuple:
    """--precision's names, or the earlier --dtype items with --dtype-mode (default autocast)
    for the bare ones."""
    if args.precision is not None:
        if args.dtype is not None or args.dtype_mode is not None:
            raise UsageError("--precision replaces --dtype and --dtype-mode: give one of them")
        with usage_errors():
            return tuple(get_precision(name) for name in split_list(args.precision))
    mode = args.dtype_mode or "autocast"
    if args.dtype is None:
        names = [precision.dtype for precision in settings.precisions]
    else:
        names = split_list(args.dtype)
    with usage_errors():
        return tuple(from_dtype(*dtype_and_mode(name, mode)) for name in names)


def dtype_and_mode(text: str, default_mode: str) -> tuple[str, str]:
    """`bf16-cast` -> (bf16, cast); a bare dtype takes `default_mode`."""
    dtype, _, mode = text.strip().partition("-")
    return dtype, mode or default_mode


def axis_changes(args: argparse.Namespace, settings: SweepSettings) -> dict:
    """The grid axes and run counts the command line sets, parsed."""
    changes: dict = {}
    if args.variants is not None:
        changes["variants"] = tuple(split_list(args.variants))
    if args.component is not None:
        changes["components"] = tuple(split_list(args.component))
    if args.frames is not None:
        changes["frames"] = parse_counts(args.frames, "--frames")
    if args.batch is not None:
        changes["batch"] = parse_counts(args.batch, "--batch")
    if args.image_size is not None:
        changes["image_sizes"] = parse_sizes(args.image_size)
    if args.precision is not None or args.dtype is not None or args.dtype_mode is not None:
        changes["precisions"] = precision_changes(args, settings)
    if args.warmup is not None:
        if args.warmup < 0:
            raise UsageError(f"--warmup must be at least 0, got {args.warmup}")
        changes["warmup"] = args.warmup
    if args.repeats is not None:
        if args.repeats < 1:
            raise UsageError(f"--repeats must be at least 1, got {args.repeats}")
        changes["repeats"] = args.repeats
    return {**changes, **training_changes(args)}


def training_changes(args: argparse.Namespace) -> dict:
    """--mode, --trainable and --checkpoint; UsageError for the last two without --mode train."""
    if args.mode != "train":
        given = [name for name in ("trainable", "checkpoint") if getattr(args, name) is not None]
        if given:
            raise UsageError(f"--{given[0]} needs --mode train")
        return {}
    changes = {"mode": "train", "trainable": args.trainable}
    if args.checkpoint is not None:
        changes["checkpoint"] = args.checkpoint
    return changes


def check_settings(settings: SweepSettings, patch_size: int) -> None:
    """UsageError for unknown variants or components, empty axes, or unfit image sizes."""
    if not settings.variants:
        raise UsageError("--variants must name at least one variant")
    with usage_errors():
        for name in settings.variants:
            get_variant(name)
    if len(set(settings.variants)) != len(settings.variants):
        raise UsageError(f"--variants names a variant twice: {','.join(settings.variants)}")
    for component in settings.components:
        if component not in COMPONENTS:
            raise UsageError(
                f"unknown component {component!r}; choose from {', '.join(COMPONENTS)}"
            )
    if not settings.components or not settings.precisions:
        raise UsageError("--component and --precision must name at least one value")
    check_sizes(settings.image_sizes, patch_size)
    with usage_errors():
        for component in settings.components:
            training_for(settings, component)


def check_memory_budget(budget: float | None, device_type: str) -> None:
    """UsageError for a budget without CUDA, or one outside (0, the GPU's memory]."""
    if budget is None:
        return
    if device_type != "cuda":
        raise UsageError("--memory-budget caps CUDA memory; this run uses the CPU")
    launch = Launch.from_environment()
    index = cuda_index(launch.local_rank, launch.rank)
    total = torch.cuda.get_device_properties(index).total_memory / 2**30
    if not 0 < budget <= total:
        raise UsageError(
            f"--memory-budget must be above 0 and at most {total:.1f} GiB, got {budget}"
        )


def sequence_variants(
    settings: SweepSettings, architecture: Architecture, named: bool
) -> tuple[str, ...]:
    """The variants a sequence-parallel sweep runs: all `named` ones, which must each split a
    sequence for every component, else those of the preset that can."""
    with usage_errors():
        able = tuple(
            name
            for name in settings.variants
            if all(splits_sequences(name, c, architecture) for c in settings.components)
        )
    if named and able != settings.variants:
        unable = sorted(set(settings.variants) - set(able))
        raise UsageError(
            f"--parallel sequence: variant(s) {', '.join(unable)} cannot split a sequence"
        )
    if not able:
        raise UsageError("--parallel sequence: no variant of the preset can split a sequence")
    return able


def check_world_size(parallel: str, world_size: int) -> None:
    """UsageError for a sequence-parallel sweep without at least two ranks to split over."""
    if parallel == "sequence" and world_size < 2:
        raise UsageError("--parallel sequence needs torchrun with at least 2 ranks")


def parse_config(argv: Sequence[str] | None, attempt: int) -> SweepConfig:
    """Parse and check the command line; UsageError with one line on any problem."""
    args = build_parser().parse_args(argv)
    device_type = resolve_device(args.device)
    preset_name = args.preset or (GPU_PRESET if device_type == "cuda" else CPU_PRESET)
    with usage_errors():
        preset = load_preset(preset_name)
        for module in args.variant_module:
            load_variant_module(module)
    settings = dataclasses.replace(preset.settings, **axis_changes(args, preset.settings))
    check_settings(settings, preset.architecture.patch_size)
    launch = Launch.from_environment()
    world_size = launch.world_size
    check_world_size(args.parallel, world_size)
    if args.parallel == "sequence":
        variants = sequence_variants(settings, preset.architecture, args.variants is not None)
        settings = dataclasses.replace(settings, variants=variants)
    check_memory_budget(args.memory_budget, device_type)
    with usage_errors():
        attention = choose_attention(
            args.attention, world_size, preset.architecture.num_heads, launch.local_world_size
        )
    if args.parallel == "sequence" and settings.mode == "train" and attention != "ulysses":
        raise UsageError(
            f"training split over ranks runs Ulysses attention (its exchanges have a backward), "
            f"not {attention}: pass --sp-attention ulysses with at most "
            f"{preset.architecture.num_heads} ranks"
        )
    out_dir, resume = choose_out_dir(args, attempt)
    return SweepConfig(
        preset=preset.name,
        architecture=preset.architecture,
        settings=settings,
        out_dir=out_dir,
        resume=resume,
        memory_budget_gib=args.memory_budget,
        device_type=device_type,
        seed=args.seed,
        quiet=args.quiet,
        parallel=args.parallel,
        attention=attention,
    )

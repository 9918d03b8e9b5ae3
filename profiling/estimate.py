"""`python -m profiling.estimate`: how many frames fit, without a GPU. Estimates per variant
and frame count (`vggt.memory`), and the largest frame count that fits each device memory
size, as a table or as JSON: of a forward (`--mode inference`) or of one training step
(`--mode train`: forward with the loss, backward and AdamW, `vggt.memory.training`).

    python -m profiling.estimate --preset vggt-1b --frames 1,200,1000 --precision autocast \\
        --device-memory 24GiB,80GiB [--height H --width W] [--offload] [--world-size N] \\
        [--cublas-workspace 32MiB] [--cuda-context 600MiB] [--nccl 1GiB] [--gpu H100] [--json]
    python -m profiling.estimate --mode train --component model \\
        [--trainable unfrozen-aggregator] [--checkpoint blocks] ...
"""

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

from profiling.sweep.options import UsageError, parse_counts
from profiling.sweep.presets import load_preset
from vggt.memory.device_rates import rates_for
from vggt.memory.estimate import (
    CUBLAS_WORKSPACE_BYTES,
    CUDA_CONTEXT_BYTES,
    NCCL_BYTES,
    FakeModel,
)
from vggt.memory.fit import max_frames_by_budget
from vggt.memory.timing import forward_time
from vggt.memory.training import FakeTrainingModel
from vggt.memory.units import bytes_in, format_bytes, parse_bytes
from vggt.models.variants import COMPONENTS, variant_names
from vggt.parallel.sequence import ATTENTIONS, choose_attention
from vggt.precision import (
    DTYPE_MODES,
    DTYPE_NAMES,
    PRECISIONS,
    choose_precision,
    get_precision,
)
from vggt.training.checkpointing import CHECKPOINT_POLICIES
from vggt.training.step import PHASES
from vggt.training.trainable import PRESETS, parse_trainable

FITS_RULE = (
    "a frame count fits M when reserved bound + CUDA context (+ NCCL buffers over several "
    "GPUs) <= M"
)
CONTEXT_NOTE = "assumptions until python -m profiling.gpu_check measures them on a GPU"
MODES = ("inference", "train")
# Frame counts of the table rows when --frames is not given, per mode: a training step keeps
# far more per frame, and these are the line's passes of the fit (reused).
DEFAULT_FRAMES = {"inference": "1,200,1000", "train": "1,8,32"}
# What --trainable means when not given, per component.
DEFAULT_TRAINABLE = {"model": "unfrozen-aggregator", "aggregator": "aggregator"}
# Inference options that a training step has no use for.
INFERENCE_ONLY = {
    "offload": "--offload",
    "predictions_on_device": "--predictions-on-device",
    "gpu": "--gpu",
}


# The reports' columns before the fits, for a forward and for a training step.
INFERENCE_COLUMNS = (
    "variant",
    "frames",
    "live peak GiB",
    "allocated",
    "reserved bound",
    "weights",
    "kept outputs",
    "transient",
    "host",
    "predicted s",
)
TRAINING_COLUMNS = (
    "variant",
    "frames",
    "forward peak GiB",
    "backward peak",
    "optimizer peak",
    "weights",
    "gradients",
    "AdamW states",
    "inputs",
    "allocated",
    "reserved bound",
    "required",
)


def gib(value: int) -> str:
    """Bytes as GiB with two decimals, without the unit (the table's columns name it)."""
    return bytes_in(value, "GiB", 2)


def precision_text(args: argparse.Namespace) -> str:
    """The precision as run: its name and what it means."""
    return f"{args.precision.label} ({args.precision.description})"


def table_head(columns: tuple[str, ...], budgets: list[int]) -> list[str]:
    """A table's header and alignment rows: `columns` (the first left-aligned, the others
    right-aligned), then a centred column per budget saying whether a row fits it."""
    header = [*columns, *(f"fits {gib(budget)} GiB" for budget in budgets)]
    alignment = "|---|" + "---:|" * (len(columns) - 1) + ":---:|" * len(budgets)
    return ["| " + " | ".join(header) + " |", alignment]


def fits_cells(row: dict, budgets: list[int]) -> list[str]:
    """`yes` or `no` per budget: whether the row's required bytes fit it."""
    return ["yes" if row["required_bytes"] <= budget else "no" for budget in budgets]


def format_table(results: list[dict], args: argparse.Namespace, elapsed_s: float) -> str:
    """The human-readable report: one row per variant and frame count, then the fits."""
    budgets = args.budgets
    lines = [
        f"Estimated device memory (fake tensors, no GPU): preset {args.preset}, "
        f"{args.component}, {args.height}x{args.width}, {precision_text(args)}, "
        f"batch {args.batch}"
        + (", layer outputs offloaded to host" if args.offload else "")
        + (
            ", optimized depth and point predictions in host memory"
            if args.component == "model" and not args.predictions_on_device
            else ""
        )
        + (
            f", frames split over {args.world_size} GPUs ({args.attention}); per-GPU figures "
            "are the busiest rank's (the last, which holds the extra frames)"
            if args.world_size > 1
            else ""
        ),
        "",
        *table_head(INFERENCE_COLUMNS, budgets),
    ]
    for result in results:
        for row in result["estimates"]:
            fits = fits_cells(row, budgets)
            lines.append(
                f"| {row['variant']} | {row['frames']} | {gib(row['live_peak_bytes'])} | "
                f"{gib(row['allocated_bytes'])} | {gib(row['reserved_bound_bytes'])} | "
                f"{gib(row['weights_bytes'])} | {gib(row['output_bytes'])} | "
                f"{gib(row['transient_bytes'])} | {gib(row['host_bytes'])} | "
                f"{row['predicted_seconds']:.3g} | " + " | ".join(fits) + " |"
            )
    lines += [
        "",
        f"CUDA context: {format_bytes(args.cuda_context_bytes, gib_digits=2)}"
        + (
            f", NCCL buffers: {format_bytes(args.nccl_bytes, gib_digits=2)}"
            if args.world_size > 1
            else ""
        )
        + f" ({CONTEXT_NOTE}); allocated includes a cuBLAS workspace of "
        f"{format_bytes(args.cublas_workspace_bytes)}; {FITS_RULE}. Predicted seconds: one "
        f"forward on the busiest rank at {args.rates.tflops:g} TFLOP/s and "
        f"{args.rates.link_gbs:g} GB/s per rank, {args.rates.describe()}.",
    ]
    lines += fit_lines(results, elapsed_s)
    return "\n".join(lines)


def format_training_table(results: list[dict], args: argparse.Namespace, elapsed_s: float) -> str:
    """The human-readable report of training steps: per variant and frame count each phase's
    peak, what stays resident, the allocator's figures and the fits."""
    budgets = args.budgets
    lines = [
        f"Estimated device memory of one training step (fake tensors, no GPU): preset "
        f"{args.preset}, {args.component}, {args.height}x{args.width}, {precision_text(args)}, "
        f"batch {args.batch}; trains {', '.join(args.parts)} ({args.trainable}), checkpoint "
        f"{args.checkpoint}, AdamW"
        + (
            f"; frames split over {args.world_size} GPUs (ulysses), gradients summed; per-GPU "
            "figures are the busiest rank's (the last, which holds the extra frames)"
            if args.world_size > 1
            else ""
        ),
        "",
        *table_head(TRAINING_COLUMNS, budgets),
    ]
    for result in results:
        for row in result["estimates"]:
            peaks = [gib(row["phase_peak_bytes"][phase]) for phase in PHASES]
            inputs = row["input_bytes"] + row["target_bytes"]
            fits = fits_cells(row, budgets)
            lines.append(
                f"| {row['variant']} | {row['frames']} | {' | '.join(peaks)} | "
                f"{gib(row['weights_bytes'])} | {gib(row['gradient_bytes'])} | "
                f"{gib(row['optimizer_state_bytes'])} | {gib(inputs)} | "
                f"{gib(row['allocated_bytes'])} | {gib(row['reserved_bound_bytes'])} | "
                f"{gib(row['required_bytes'])} | " + " | ".join(fits) + " |"
            )
    lines += [
        "",
        "Peaks: live tensor bytes within each phase, everything alive counted (weights, images "
        "and targets, AdamW states, gradients, activations), of a step after the first (AdamW's "
        "states resident). "
        f"CUDA context: {format_bytes(args.cuda_context_bytes, gib_digits=2)} ({CONTEXT_NOTE}); "
        f"allocated includes a cuBLAS workspace of {format_bytes(args.cublas_workspace_bytes)}; "
        f"{FITS_RULE}.",
    ]
    lines += fit_lines(results, elapsed_s)
    return "\n".join(lines)


def fit_lines(results: list[dict], elapsed_s: float) -> list[str]:
    """The largest frame counts that fit each size, and the fake passes it took."""
    lines = []
    for result in results:
        for size, frames in result["max_frames_by_budget"].items():
            lines.append(f"{result['variant']}: at most {frames} frames fit {gib(int(size))} GiB")
    passes = sum(result["fake_passes"] for result in results)
    return [*lines, f"{passes} fake passes in {elapsed_s:.0f} s"]


def build_parser() -> argparse.ArgumentParser:
    """The estimator's options."""
    parser = argparse.ArgumentParser(
        prog="python -m profiling.estimate",
        description="Estimate device memory per frame count without a GPU, of a forward or of "
        "one training step.",
    )
    parser.add_argument("--preset", default="vggt-1b", help="architecture preset")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="inference",
        help="inference: one forward without autograd (default); train: one training step "
        "(forward with the loss, backward, AdamW), weights, gradients and AdamW's states "
        "included",
    )
    parser.add_argument(
        "--trainable",
        metavar="SPEC",
        help="with --mode train: what trains, a preset (" + ", ".join(PRESETS) + ") or "
        "comma-separated parts (aggregator, camera, depth, point, track); default "
        "unfrozen-aggregator for --component model, aggregator for --component aggregator",
    )
    parser.add_argument(
        "--checkpoint",
        choices=CHECKPOINT_POLICIES,
        help="with --mode train: what autograd keeps for backward; none: every activation, "
        "blocks: each block's (and DPT head chunk's) inputs (default), selective: their "
        "inputs and attention outputs",
    )
    parser.add_argument(
        "--frames",
        help="comma-separated frame counts (default: "
        + "; ".join(f"{frames} in {mode}" for mode, frames in DEFAULT_FRAMES.items())
        + ")",
    )
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        help="fp32: no autocast; autocast: fp32 weights under bf16 autocast (default); bf16: "
        "the aggregator's weights in bf16 under bf16 autocast (the heads in fp32); "
        "autocast-fp16, fp16: the same with fp16",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="earlier form of --precision")
    parser.add_argument(
        "--dtype-mode",
        choices=DTYPE_MODES,
        help="with --dtype (earlier form of --precision): bf16 with autocast is the precision "
        "autocast, with cast the precision bf16",
    )
    parser.add_argument(
        "--device-memory",
        default="80GiB",
        help="memory to fit, e.g. 80GiB; a comma-separated list gives one fit per size",
    )
    parser.add_argument("--height", type=int, help="image height (default: preset img_size)")
    parser.add_argument("--width", type=int, help="image width (default: preset img_size)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variants", default="full,optimized", help="comma-separated")
    parser.add_argument(
        "--component",
        default="aggregator",
        choices=COMPONENTS,
        help="aggregator, or model: the aggregator and the camera, depth and point heads (as "
        "vggt.infer runs them)",
    )
    parser.add_argument("--offload", action="store_true", help="kept layers in host memory")
    parser.add_argument(
        "--query-points",
        type=int,
        default=0,
        metavar="N",
        help="with --component model: track N query points too (the track head and its "
        "tracker, split over the GPUs with --world-size)",
    )
    parser.add_argument(
        "--predictions-on-device",
        action="store_true",
        help="with --component model: keep the depth and point predictions on the GPU "
        "(default: in host memory, chunk by chunk, as vggt.infer runs the optimized model)",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=1,
        help="GPUs the sequence is split over (optimized variant): the busiest rank's needs, "
        "frames counted over all ranks",
    )
    parser.add_argument(
        "--ranks-per-node",
        type=int,
        help="GPUs on each node when --world-size spans several nodes (default: one node)",
    )
    parser.add_argument(
        "--attention",
        choices=tuple(ATTENTIONS),
        help="global attention over the GPUs (default: ulysses, ring when there are more GPUs "
        "than heads; hybrid over several nodes of several GPUs)",
    )
    parser.add_argument(
        "--cublas-workspace",
        default=format_bytes(CUBLAS_WORKSPACE_BYTES),
        help="cuBLAS workspace of the compute stream (default: %(default)s, as on compute "
        "capability >= 9.0)",
    )
    parser.add_argument(
        "--cuda-context",
        default=format_bytes(CUDA_CONTEXT_BYTES),
        help="CUDA context and kernels, outside the allocator (default: %(default)s, an "
        "assumption)",
    )
    parser.add_argument(
        "--nccl",
        default=format_bytes(NCCL_BYTES),
        help="NCCL's buffers outside the allocator, counted over several GPUs (default: "
        "%(default)s, an assumption)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes, one variant each (default: the CPU count)",
    )
    parser.add_argument(
        "--gpu",
        metavar="NAME",
        help="GPU whose rates predict the seconds, matched by type in "
        "vggt/memory/device_rates.json (e.g. H100); default: the stated H100/H200-class rates",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and validate; argparse's exit code 2 with one line for anything wrong."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.frames = args.frames or DEFAULT_FRAMES[args.mode]
        args.frames_list = list(parse_counts(args.frames, "--frames"))
        training_options(args)
        args.budgets = [parse_bytes(text) for text in args.device_memory.split(",")]
        args.cublas_workspace_bytes = parse_bytes(args.cublas_workspace)
        args.cuda_context_bytes = parse_bytes(args.cuda_context)
        args.nccl_bytes = parse_bytes(args.nccl)
        args.rates = rates_for(args.gpu)
        architecture = load_preset(args.preset).architecture
        default = get_precision("autocast")
        args.precision = choose_precision(args.precision, args.dtype, args.dtype_mode, default)
    except (UsageError, ValueError) as error:
        parser.error(str(error))
    args.variant_list = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variant_list if v not in variant_names()]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {variant_names()}")
    args.height = args.height or architecture.img_size
    args.width = args.width or architecture.img_size
    patch = architecture.patch_size
    if args.height % patch or args.width % patch:
        parser.error(f"--height and --width must be multiples of the patch size {patch}")
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.world_size < 1:
        parser.error("--world-size must be at least 1")
    if args.query_points < 0 or (args.query_points and args.component != "model"):
        parser.error("--query-points takes a count of at least 0, with --component model")
    per_node = args.ranks_per_node
    if per_node is not None and not 1 <= per_node <= args.world_size:
        parser.error(f"--ranks-per-node must be between 1 and --world-size, got {per_node}")
    if args.world_size > 1 and "full" in args.variant_list:
        parser.error("--world-size above 1 splits only the optimized variant: --variants optimized")
    try:
        args.attention = choose_attention(
            args.attention, args.world_size, architecture.num_heads, args.ranks_per_node
        )
    except ValueError as error:
        parser.error(f"{error} (--attention ring)")
    if args.mode == "train" and args.world_size > 1 and args.attention != "ulysses":
        parser.error(
            f"training split over {args.world_size} GPUs runs ulysses attention, not "
            f"{args.attention} (at most as many GPUs as heads)"
        )
    if min(args.frames_list) < args.world_size:
        parser.error("--frames must each be at least --world-size (a frame per rank)")
    return args


def verb(options: list[str]) -> str:
    """The verb for `options`: "applies" to one, "apply" to several."""
    return "applies" if len(options) == 1 else "apply"


def training_options(args: argparse.Namespace) -> None:
    """Check the options of --mode train against the mode and fill in their defaults (the
    trained parts in `args.parts`); ValueError for a combination that does not apply."""
    if args.mode != "train":
        options = {"--trainable": args.trainable, "--checkpoint": args.checkpoint}
        given = [option for option, value in options.items() if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} {verb(given)} to --mode train only")
        return
    if args.world_size > 1 and args.query_points:
        raise ValueError(
            "tracks of a sequence split over GPUs are not trained: drop --query-points"
        )
    given = [option for name, option in INFERENCE_ONLY.items() if getattr(args, name)]
    if given:
        raise ValueError(f"{' and '.join(given)} {verb(given)} to --mode inference only")
    args.trainable = args.trainable or DEFAULT_TRAINABLE[args.component]
    args.checkpoint = args.checkpoint or "blocks"
    args.parts = parse_trainable(args.trainable)
    if args.component == "aggregator" and args.parts != ("aggregator",):
        raise ValueError(
            "--component aggregator trains the aggregator only (--trainable aggregator)"
        )
    if "track" in args.parts and not args.query_points:
        raise ValueError("training the track head needs query points (--query-points N)")


def fake_model(args: argparse.Namespace, variant: str) -> FakeModel:
    """The variant on fake storage as the mode runs it: a forward's, or a training step's."""
    architecture = load_preset(args.preset).architecture
    if args.mode == "train":
        return FakeTrainingModel(
            variant,
            args.component,
            architecture,
            args.precision,
            args.parts,
            args.checkpoint,
            cublas_workspace_bytes=args.cublas_workspace_bytes,
            cuda_context_bytes=args.cuda_context_bytes,
            query_points=args.query_points,
            nccl_bytes=args.nccl_bytes,
            world_size=args.world_size,
        )
    return FakeModel(
        variant,
        args.component,
        architecture,
        args.precision,
        args.offload,
        cublas_workspace_bytes=args.cublas_workspace_bytes,
        cuda_context_bytes=args.cuda_context_bytes,
        nccl_bytes=args.nccl_bytes,
        world_size=args.world_size,
        attention=args.attention,
        ranks_per_node=args.ranks_per_node,
        host_predictions=not args.predictions_on_device,
        query_points=args.query_points,
    )


def estimate_variant(args: argparse.Namespace, variant: str) -> dict:
    """One variant's estimates per frame count and its largest fitting frame counts; in
    inference, each with its predicted forward seconds."""
    size = (args.batch, args.height, args.width)
    model = fake_model(args, variant)
    estimates = [model.estimate(frames, *size) for frames in args.frames_list]
    fits = max_frames_by_budget(model, args.budgets, *size)
    rows = [asdict(estimate) for estimate in estimates]
    if args.mode == "inference":
        architecture = load_preset(args.preset).architecture
        for row in rows:
            forward = forward_time(
                architecture,
                row["frames"],
                args.height,
                args.width,
                args.precision,
                args.world_size,
                model.attention,
                heads=args.component == "model",
                ranks_per_node=args.ranks_per_node,
                rates=args.rates,
            )
            row["predicted_seconds"] = forward.seconds
    return {
        "variant": variant,
        "live_peaks": {str(e.frames): e.live_peak_bytes for e in estimates},
        "max_frames": fits[args.budgets[0]],
        "max_frames_by_budget": {str(budget): frames for budget, frames in fits.items()},
        "fake_passes": model.passes,
        "estimates": rows,
    }


def run(args: argparse.Namespace) -> list[dict]:
    """Every variant's results, the variants in up to `args.jobs` worker processes at once
    (fake passes are single-threaded Python; a fit table of two variants takes half the time
    on two cores)."""
    jobs = min(args.jobs, len(args.variant_list))
    if jobs <= 1:
        return [estimate_variant(args, variant) for variant in args.variant_list]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        return list(pool.map(estimate_variant, [args] * len(args.variant_list), args.variant_list))


def mode_fields(args: argparse.Namespace) -> dict:
    """The JSON fields of the mode: the rates of the predicted seconds in inference; what
    trains, and how, in train."""
    if args.mode == "inference":
        return {"rates": args.rates.to_json()}
    return {
        "trainable": args.trainable,
        "trained_parts": list(args.parts),
        "checkpoint": args.checkpoint,
        "optimizer": "AdamW",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print the estimates as a table (or JSON with --json); argparse's exit 2 for bad usage."""
    args = parse_args(argv)
    started = time.perf_counter()
    results = run(args)
    elapsed_s = time.perf_counter() - started
    if args.json:
        document = {
            "mode": args.mode,
            "preset": args.preset,
            "component": args.component,
            "precision": args.precision.label,
            "height": args.height,
            "width": args.width,
            "batch": args.batch,
            "offload": args.offload,
            "world_size": args.world_size,
            "attention": args.attention,
            "ranks_per_node": args.ranks_per_node,
            "query_points": args.query_points,
            "cublas_workspace_bytes": args.cublas_workspace_bytes,
            "cuda_context_bytes": args.cuda_context_bytes,
            "nccl_bytes": args.nccl_bytes if args.world_size > 1 else 0,
            "fits_rule": FITS_RULE,
            **mode_fields(args),
            "device_memory_bytes": args.budgets[0],
            "device_memory_list": args.budgets,
            "elapsed_s": round(elapsed_s, 1),
            "variants": results,
        }
        print(json.dumps(document, indent=2))
    elif args.mode == "train":
        print(format_training_table(results, args, elapsed_s))
    else:
        print(format_table(results, args, elapsed_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

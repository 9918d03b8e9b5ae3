"""The estimator's command line: estimates per variant and frame count, and the largest frame
count that fits each memory size, as a table or as JSON.

    python -m profiling.estimate --preset vggt-1b --frames 1,200,1000 --dtype bf16 \\
        --device-memory 80GiB [--height H --width W] [--offload] [--json]
"""

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict

from profiling.estimate.fake_model import FakeModel
from profiling.estimate.fit import max_frames
from profiling.sweep.options import UsageError, parse_counts
from profiling.sweep.presets import load_preset
from profiling.sweep.variants import variant_names
from profiling.units import DTYPES, bytes_in, parse_bytes


def gib(value: int) -> str:
    """Bytes as GiB with two decimals, without the unit (the table's columns name it)."""
    return bytes_in(value, "GiB", 2)


def format_table(results: list[dict], args: argparse.Namespace) -> str:
    """The human-readable report: one row per variant and frame count, then the fit."""
    budget = args.budgets[0]
    lines = [
        f"Estimated peak memory (fake tensors, no GPU): preset {args.preset}, {args.component}, "
        f"{args.height}x{args.width}, {args.dtype}, batch {args.batch}"
        + (", layer outputs offloaded to host" if args.offload else ""),
        "",
        "| variant | frames | peak GiB | weights | kept outputs | transient | host | "
        f"fits {gib(budget)} GiB |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for result in results:
        for row in result["estimates"]:
            lines.append(
                f"| {row['variant']} | {row['frames']} | {gib(row['peak_bytes'])} | "
                f"{gib(row['weights_bytes'])} | {gib(row['output_bytes'])} | "
                f"{gib(row['transient_bytes'])} | {gib(row['host_bytes'])} | "
                f"{'yes' if row['peak_bytes'] <= budget else 'no'} |"
            )
    lines.append("")
    for result in results:
        for size, frames in result["max_frames_by_budget"].items():
            lines.append(f"{result['variant']}: at most {frames} frames fit {gib(int(size))} GiB")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The estimator's options."""
    parser = argparse.ArgumentParser(
        prog="python -m profiling.estimate",
        description="Estimate peak device memory per frame count without a GPU.",
    )
    parser.add_argument("--preset", default="vggt-1b", help="architecture preset")
    parser.add_argument("--frames", default="1,200,1000", help="comma-separated frame counts")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument(
        "--device-memory",
        default="80GiB",
        help="memory to fit, e.g. 80GiB; a comma-separated list gives one fit per size",
    )
    parser.add_argument("--height", type=int, help="image height (default: preset img_size)")
    parser.add_argument("--width", type=int, help="image width (default: preset img_size)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variants", default="full,optimized", help="comma-separated")
    parser.add_argument("--component", default="aggregator", choices=["aggregator", "model"])
    parser.add_argument("--offload", action="store_true", help="kept layers in host memory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and validate; argparse's exit code 2 with one line for anything wrong."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.frames_list = list(parse_counts(args.frames, "--frames"))
        args.budgets = [parse_bytes(text) for text in args.device_memory.split(",")]
        architecture = load_preset(args.preset).architecture
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
    if args.component == "model" and args.dtype != "fp32":
        parser.error(
            "the whole model runs its heads in fp32: use --dtype fp32 or --component aggregator"
        )
    return args


def run(args: argparse.Namespace) -> list[dict]:
    """Estimates per variant and frame count, and each variant's largest fitting frame count."""
    results = []
    architecture = load_preset(args.preset).architecture
    for variant in args.variant_list:
        model = FakeModel(variant, args.component, architecture, DTYPES[args.dtype], args.offload)
        estimates = [
            model.estimate(frames, args.batch, args.height, args.width)
            for frames in args.frames_list
        ]
        cache = {e.frames: e.peak_bytes for e in estimates}
        fits = {
            str(budget): max_frames(model, budget, args.batch, args.height, args.width, cache)
            for budget in args.budgets
        }
        results.append(
            {
                "variant": variant,
                "peaks": {str(e.frames): e.peak_bytes for e in estimates},
                "max_frames": fits[str(args.budgets[0])],
                "max_frames_by_budget": fits,
                "estimates": [asdict(e) for e in estimates],
            }
        )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Print the estimates as a table (or JSON with --json); argparse's exit 2 for bad usage."""
    args = parse_args(argv)
    results = run(args)
    if args.json:
        document = {
            "preset": args.preset,
            "component": args.component,
            "dtype": args.dtype,
            "height": args.height,
            "width": args.width,
            "batch": args.batch,
            "offload": args.offload,
            "device_memory_bytes": args.budgets[0],
            "device_memory_list": args.budgets,
            "variants": results,
        }
        print(json.dumps(document, indent=2))
    else:
        print(format_table(results, args))
    return 0

"""How many frames fit? Peak memory of the aggregator or model from fake tensors, no GPU needed.

    python -m profiling.estimate --preset vggt-1b --frames 1,200,1000 --dtype bf16 \\
        --device-memory 80GiB [--height H --width W] [--offload] [--json]

The forward pass runs under FakeTensorMode with a tracker that counts every tensor storage
alive on the compute device, so the figures are the peak of live tensor bytes (weights, input,
activations) an allocator would see, without kernel workspaces or allocator fragmentation.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from profiling.cases import Architecture
from profiling.fake_memory import LiveBytesTracker
from profiling.presets import PresetError, load_preset
from profiling.units import DTYPES, bytes_in, parse_bytes
from profiling.variants import get_variant, variant_names

_SEARCH_LIMIT = 1 << 20


@dataclass(frozen=True)
class Estimate:
    """Bytes on the compute device at the peak of one forward pass, and what they are."""

    variant: str
    frames: int
    peak_bytes: int
    weights_bytes: int
    input_bytes: int
    output_bytes: int
    transient_bytes: int
    host_bytes: int


class FakeModel:
    """One variant built on fake storage (no memory), reused across frame counts."""

    def __init__(
        self,
        variant: str,
        component: str,
        architecture: Architecture,
        dtype: torch.dtype,
        offload: bool = False,
    ) -> None:
        self.variant = variant
        self.dtype = dtype
        with torch.device("meta"):
            module = get_variant(variant).build(component, architecture).to(dtype)
        aggregator = getattr(module, "aggregator", module)
        if offload and hasattr(aggregator, "offload_device"):
            aggregator.offload_device = torch.device("meta")
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        with self.mode:
            self.module: nn.Module = module.to_empty(device="cpu").eval()
        storages = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in self.weights()}
        self.weights_bytes = sum(storages.values())

    def weights(self) -> list[torch.Tensor]:
        return [*self.module.parameters(), *self.module.buffers()]

    def estimate(self, frames: int, batch: int, height: int, width: int) -> Estimate:
        """Run one fake forward pass of `batch` x `frames` images of height x width."""
        with self.mode:
            images = torch.rand(batch, frames, 3, height, width, dtype=self.dtype)
            tracker = LiveBytesTracker("cpu")
            tracker.ignore([*self.weights(), images])
            with tracker, torch.no_grad():
                outputs = self.module(images)
            device_out, host_out = _output_bytes(outputs)
            peak = tracker.peak_bytes
        input_bytes = images.numel() * images.element_size()
        return Estimate(
            variant=self.variant,
            frames=frames,
            peak_bytes=self.weights_bytes + input_bytes + peak,
            weights_bytes=self.weights_bytes,
            input_bytes=input_bytes,
            output_bytes=device_out,
            transient_bytes=peak - device_out,
            host_bytes=host_out,
        )


def _output_bytes(outputs: object) -> tuple[int, int]:
    """Bytes of the returned layer outputs (or predictions): (on the device, offloaded)."""
    if isinstance(outputs, tuple):
        outputs = outputs[0]
    if isinstance(outputs, dict):
        tensors = [v for v in outputs.values() if isinstance(v, torch.Tensor)]
    elif hasattr(outputs, "items"):
        tensors = [t for _, t in outputs.items()]
    else:
        tensors = list(outputs)
    device = host = 0
    for tensor in tensors:
        data = getattr(tensor, "host", tensor)
        size = data.numel() * data.element_size()
        if data is tensor:
            device += size
        else:
            host += size
    return device, host


def max_frames(
    model: FakeModel,
    budget: int,
    batch: int,
    height: int,
    width: int,
    cache: dict[int, int] | None = None,
) -> int:
    """Largest frame count whose peak fits `budget` bytes (0 if not even one frame fits).

    Peaks grow almost linearly with the frame count, so a line through two probes lands next
    to the answer; a gallop from there and a bisection make it exact with few passes. Pass the
    same `cache` (frames -> peak) to search several budgets of one model and size.
    """
    cache = {} if cache is None else cache

    def fits(frames: int) -> bool:
        if frames not in cache:
            cache[frames] = model.estimate(frames, batch, height, width).peak_bytes
        return cache[frames] <= budget

    if not fits(1):
        return 0
    probe = 32
    fits(probe)
    slope = max((cache[probe] - cache[1]) / (probe - 1), 1.0)
    guess = int(min(_SEARCH_LIMIT, max(1, 1 + (budget - cache[1]) // slope)))
    step = 1
    if fits(guess):
        low, high = guess, guess + step
        while high <= _SEARCH_LIMIT and fits(high):
            low, step = high, step * 2
            high = low + step
    else:
        low, high = guess - step, guess
        while low > 1 and not fits(low):
            high, step = low, step * 2
            low = max(1, high - step)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


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
        args.frames_list = [int(f) for f in args.frames.split(",") if f.strip()]
        if not args.frames_list or min(args.frames_list) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--frames must be positive integers separated by commas, got {args.frames!r}")
    try:
        args.budgets = [parse_bytes(text) for text in args.device_memory.split(",")]
        architecture = load_preset(args.preset).architecture
    except (ValueError, PresetError) as error:
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


if __name__ == "__main__":
    sys.exit(main())

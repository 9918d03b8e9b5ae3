"""The command line's options: parsed and checked, with argparse's exit status 2 for misuse."""

import argparse
from collections.abc import Sequence

import torch

from vggt.utils.load_fn import PATCH_SIZE, TARGET_SIZE

DEFAULT_CHECKPOINT = "facebook/VGGT-1B"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    """Every option, with its help text."""
    parser = argparse.ArgumentParser(
        prog="vggt.infer",
        description=(
            "Cameras, depth and point maps (and tracks) for a sequence of images, its frames "
            "split over the ranks of torchrun: torchrun --nproc_per_node=N -m vggt.infer "
            "IMAGES... --out DIR"
        ),
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGES",
        help="image files, folders (their image files) or globs; frames in sorted name order",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--checkpoint",
        default=DEFAULT_CHECKPOINT,
        metavar="PATH_OR_ID",
        help="model.pt, .safetensors, a save_pretrained folder or a hub id "
        f"(default: {DEFAULT_CHECKPOINT})",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file of the model's constructor arguments (default: the folder's "
        "config.json, else VGGT-1B's)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=TARGET_SIZE,
        help=f"preprocessed image width, a multiple of {PATCH_SIZE} (default: {TARGET_SIZE})",
    )
    parser.add_argument(
        "--mode",
        choices=("crop", "pad"),
        default="crop",
        help="crop: width --size, taller images centre-cropped to a square; pad: the longer "
        "side --size, padded with white to a square (default: crop)",
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="bf16 or fp32 (default: bf16 on CUDA, fp32 on the CPU)",
    )
    parser.add_argument(
        "--dtype-mode",
        choices=("autocast", "cast"),
        default="autocast",
        help="bf16 as autocast over fp32 weights (default) or the aggregator's weights cast "
        "to bf16 without autocast (the heads stay fp32)",
    )
    parser.add_argument(
        "--offload",
        action="store_true",
        help="keep the aggregator layers the heads read in host memory (less GPU memory)",
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        help="default: cuda if available (one GPU per rank, NCCL), else cpu (gloo)",
    )
    parser.add_argument(
        "--query-points",
        metavar="FILE",
        help=".npy, .txt or .csv of [N, 2] pixel (x, y) in the first frame: tracks",
    )
    parser.add_argument(
        "--attention",
        choices=("ulysses", "ring"),
        help="global attention over ranks (default: ulysses, ring when ranks > heads)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="seconds a rank waits for the others before failing (default: 600)",
    )
    parser.add_argument(
        "--no-estimate",
        action="store_true",
        help="skip the memory estimate (and the refusal of runs that would not fit)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def parse_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, with `device` and `dtype` resolved; argparse's exit 2 for bad ones."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.size < PATCH_SIZE or options.size % PATCH_SIZE:
        parser.error(f"--size must be a positive multiple of {PATCH_SIZE}, got {options.size}")
    if not options.timeout > 0:
        parser.error(f"--timeout must be positive, got {options.timeout}")
    if options.device is None:
        options.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif options.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    if options.dtype is None:
        options.dtype = "bf16" if options.device == "cuda" else "fp32"
    return options


def precision(options: argparse.Namespace) -> str:
    """How the run computes: `fp32`, `bf16-autocast` or `bf16-cast`."""
    return "fp32" if options.dtype == "fp32" else f"{options.dtype}-{options.dtype_mode}"

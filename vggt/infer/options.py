"""The command line's options: parsed and checked, with argparse's exit status 2 for misuse."""

import argparse
from collections.abc import Sequence

import torch

from vggt.memory.units import parse_bytes
from vggt.parallel.launch import Launch
from vggt.parallel.sequence import ATTENTIONS
from vggt.precision import DTYPE_MODES, PRECISIONS, choose_precision, get_precision
from vggt.utils.load_fn import PATCH_SIZE, TARGET_SIZE

DEFAULT_CHECKPOINT = "facebook/VGGT-1B"
DRY_RUN_ONLY = ("world_size", "ranks_per_node", "device_memory", "gpu", "json")


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
        "--single-writer",
        action="store_true",
        help="rank 0 writes every frame, for an --out folder that only rank 0's node has; the "
        "other ranks send it their frames (default: each rank writes its own, in a folder "
        "every node shares)",
    )
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
        "--precision",
        choices=list(PRECISIONS),
        help="fp32 (no autocast), autocast (fp32 weights under bf16 autocast, as VGGT's "
        "README) or bf16 (the aggregator's weights in bf16 under bf16 autocast, the heads in "
        "fp32); default: autocast on CUDA, fp32 on the CPU",
    )
    parser.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        help="earlier form of --precision: fp32, or bf16 with --dtype-mode",
    )
    parser.add_argument(
        "--dtype-mode",
        choices=DTYPE_MODES,
        help="with --dtype bf16: autocast (the precision autocast) or cast (the precision bf16)",
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
        choices=tuple(ATTENTIONS),
        help="global attention over ranks (default on one node: ulysses, ring when ranks > "
        "heads; on several nodes: hybrid, ulysses inside each node and ring between them)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="seconds a rank waits for the others before failing (default: 600; raised to "
        "three predicted longest steps when a step is predicted to take longer)",
    )
    parser.add_argument(
        "--no-estimate",
        action="store_true",
        help="skip the memory estimate (and the refusal of runs that would not fit)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run nothing and load no weights: read the images' sizes and print what a rank "
        "needs, how many frames fit and the precision",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        metavar="N",
        help="with --dry-run: the ranks to plan for (default: torchrun's WORLD_SIZE, else 1)",
    )
    parser.add_argument(
        "--ranks-per-node",
        type=int,
        metavar="N",
        help="with --dry-run: ranks on each node (default: torchrun's LOCAL_WORLD_SIZE, else "
        "all on one node)",
    )
    parser.add_argument(
        "--device-memory",
        metavar="SIZE",
        help="with --dry-run: each GPU's memory, e.g. 80GiB (default: this GPU's free memory; "
        "none on a machine without CUDA)",
    )
    parser.add_argument(
        "--gpu",
        metavar="NAME",
        help="with --dry-run: the GPU type whose rates predict the forward time, e.g. H100 "
        "(default: this GPU's name; the stated H100/H200-class rates without CUDA)",
    )
    parser.add_argument("--json", action="store_true", help="with --dry-run: print JSON")
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
    elif options.device == "cuda" and not torch.cuda.is_available() and not options.dry_run:
        parser.error("--device cuda given but CUDA is not available")
    try:
        default = get_precision("autocast" if options.device == "cuda" else "fp32")
        options.precision = choose_precision(
            options.precision, options.dtype, options.dtype_mode, default
        )
        options.device_memory = (
            None if options.device_memory is None else parse_bytes(options.device_memory)
        )
    except ValueError as error:
        parser.error(str(error))
    if not options.dry_run:
        given = [name for name in DRY_RUN_ONLY if getattr(options, name) not in (None, False)]
        if given:
            names = ", ".join(f"--{name.replace('_', '-')}" for name in given)
            parser.error(f"{names} only apply with --dry-run")
    launch = Launch.from_environment()
    if options.world_size is None:
        options.world_size = launch.world_size
    elif options.world_size < 1:
        parser.error(f"--world-size must be at least 1, got {options.world_size}")
    if options.dry_run and options.ranks_per_node is None:
        options.ranks_per_node = launch.local_world_size
    per_node = options.ranks_per_node
    if per_node is not None and not 1 <= per_node <= options.world_size:
        parser.error(f"--ranks-per-node must be between 1 and the world size, got {per_node}")
    return options

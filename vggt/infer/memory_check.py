"""Before the model is loaded: the estimated peak per rank, printed, and on CUDA a refusal
(exit 2) that names what would fit when it exceeds the GPUs' memory."""

import argparse
import math

import torch

from vggt.infer.estimate import estimate_per_rank
from vggt.infer.options import DTYPES
from vggt.infer.ranks import Ranks
from vggt.infer.report import gib, info

# The track head's feature maps: channels, at half the input's height and width, in fp32.
TRACK_FEATURES = 128
TRACK_DOWN_RATIO = 2
TRACK_FEATURE_BYTES = 4


def check_memory(
    options: argparse.Namespace, ranks: Ranks, frames: int, shape: tuple[int, int], config: dict
) -> dict | None:
    """Rank 0 estimates the busiest rank's peak and prints it; on CUDA every rank raises
    InputError when that exceeds the smallest GPU's memory (the CPU's limit is not known, so
    a CPU run goes on). Returns the estimate for run.json (None with --no-estimate)."""
    if options.no_estimate:
        return None
    memory = None
    if ranks.device.type == "cuda":
        memory = min(ranks.all_gather(torch.cuda.get_device_properties(ranks.device).total_memory))
    found = problem = None
    if ranks.is_first:
        try:
            found, problem = judge_estimate(
                options, ranks.world_size, frames, shape, config, memory
            )
        except ImportError as error:
            info(f"no memory estimate (the estimator needs the profiling extras: {error})")
        else:
            if not options.quiet:
                info(estimate_line(found, memory))
    found, problem = ranks.all_gather((found, problem))[0]
    ranks.agree(problem)
    return found


def track_feature_bytes(frames: int, shape: tuple[int, int]) -> int:
    """Bytes of every frame's track features, which rank 0 gathers to track the points."""
    height, width = (-(-side // TRACK_DOWN_RATIO) for side in shape)
    return frames * TRACK_FEATURES * height * width * TRACK_FEATURE_BYTES


def estimate_line(found: dict, memory: int | None) -> str:
    """The estimate as rank 0 prints it, against the GPU's memory when there is one."""
    tracks = found["track_feature_bytes"]
    extra = f" (+{gib(tracks)} GiB of track features on rank 0)" if tracks else ""
    against = f"of {gib(memory)} GiB per GPU" if memory is not None else "(not checked on the CPU)"
    return (
        f"estimated peak per rank {gib(found['peak_bytes'])} GiB{extra} {against}; "
        "--no-estimate skips the estimate"
    )


def judge_estimate(
    options: argparse.Namespace,
    world_size: int,
    frames: int,
    shape: tuple[int, int],
    config: dict,
    memory: int | None,
) -> tuple[dict, str | None]:
    """The estimate, and the refusal's text when rank 0's peak (the busiest rank's, plus the
    track features with --query-points) exceeds `memory` bytes; never a refusal when `memory`
    is None. At most four fake passes: the run, its fit, and the run with --offload and with
    bf16 cast."""
    tracks = track_feature_bytes(frames, shape) if options.query_points else 0

    def peak_with(dtype: torch.dtype, dtype_mode: str, offload: bool) -> int:
        peak = estimate_per_rank(
            frames, world_size, *shape, dtype, dtype_mode, offload, config, options.attention
        )[0]
        return peak + tracks

    peak, fits = estimate_per_rank(
        frames,
        world_size,
        *shape,
        DTYPES[options.dtype],
        options.dtype_mode,
        options.offload,
        config,
        options.attention,
    )
    found = {
        "peak_bytes": peak,
        "track_feature_bytes": tracks,
        "device_memory_bytes": memory,
        "world_size": world_size,
    }
    if memory is None or peak + tracks <= memory:
        return found, None
    most = fits(max(0, memory - tracks))
    remedies = []
    if not options.offload and peak_with(DTYPES[options.dtype], options.dtype_mode, True) <= memory:
        remedies.append("--offload")
    cast = options.dtype == "bf16" and options.dtype_mode == "cast"
    if not cast and peak_with(torch.bfloat16, "cast", options.offload) <= memory:
        remedies.append("--dtype bf16 --dtype-mode cast")
    per_rank = most // world_size
    if per_rank > 0 and math.ceil(frames / per_rank) > world_size:
        remedies.append(f"{math.ceil(frames / per_rank)} ranks")
    advice = " or ".join(remedies) if remedies else "fewer or smaller frames"
    return found, (
        f"this run needs about {gib(peak + tracks)} GiB on a rank, more than the "
        f"{gib(memory)} GiB of a GPU: at most {most} frames fit {world_size} rank(s) as "
        f"configured; try {advice} (--no-estimate runs anyway)"
    )

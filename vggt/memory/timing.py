"""How long a forward should take on the busiest rank: its FLOPs at a stated device rate and
its sequence-parallel exchanges at a stated link bandwidth. Stated rates, not measurements: an
estimate until `python -m profiling.gpu_check` commits a measured rate."""

from dataclasses import dataclass

import torch

from vggt.models.architecture import Architecture
from vggt.precision import Precision

# Effective TFLOP/s of bf16 work (matmuls and attention) on an H100 or H200 under PyTorch's
# SDPA; fp32 work (the heads, the fp32 precision) runs at FP32_SHARE of it.
DEVICE_TFLOPS = 300.0
FP32_SHARE = 0.25
# GB/s each rank sends and receives in an exchange: between nodes a 400 Gb/s link per GPU;
# NVLink inside a node is faster, so this is the slower case.
LINK_GBS = 50.0


@dataclass(frozen=True)
class ForwardTime:
    """Predicted seconds of one forward on the busiest rank: its compute, its exchanges, and
    the longest step between two of its exchanges (one global block), at the stated rates."""

    seconds: float
    compute_seconds: float
    exchange_seconds: float
    global_block_seconds: float
    tflops: float
    link_gbs: float


def exchange_bytes(
    tokens: int, width: int, element_bytes: int, world_size: int, attention: str
) -> float:
    """Bytes one rank sends per global block: Ulysses re-shards K, V and Q to heads and the
    output back, 4 (W-1)/W² of the tokens' rows; ring passes K and V round, 2 (W-1)/W."""
    if world_size == 1:
        return 0.0
    share = (
        4 * (world_size - 1) / world_size**2
        if attention == "ulysses"
        else 2 * (world_size - 1) / world_size
    )
    return share * tokens * width * element_bytes


def forward_time(
    architecture: Architecture,
    frames: int,
    height: int,
    width: int,
    precision: Precision,
    world_size: int = 1,
    attention: str = "ulysses",
    heads: bool = False,
    tflops: float = DEVICE_TFLOPS,
    link_gbs: float = LINK_GBS,
) -> ForwardTime:
    """The prediction for `frames` images of height x width over `world_size` ranks (the
    busiest holds ceil(frames / W) of them and 1/W of global attention), with the dense heads
    when `heads`."""
    low_precision = precision.autocast_dtype is not None or precision.weights_dtype != torch.float32
    rate = tflops * 1e12 * (1.0 if low_precision else FP32_SHARE)
    share = -(-frames // world_size) / frames
    compute = architecture.aggregator_flops(frames, height, width) * share / rate
    if heads:
        heads_flops = architecture.heads_flops(frames, height, width) * share
        compute += heads_flops / (tflops * 1e12 * FP32_SHARE)
    tokens = frames * architecture.tokens_per_frame(height, width)
    element_bytes = 2 if low_precision else 4
    per_block = exchange_bytes(tokens, architecture.embed_dim, element_bytes, world_size, attention)
    exchange = architecture.depth * per_block / (link_gbs * 1e9)
    one_block = architecture.global_block_flops(frames, height, width) * share
    block = one_block / rate + per_block / (link_gbs * 1e9)
    return ForwardTime(compute + exchange, compute, exchange, block, tflops, link_gbs)

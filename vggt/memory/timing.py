"""How long a forward should take on the busiest rank: its FLOPs at a device's effective rate
and its sequence-parallel exchanges at a link bandwidth, both from the rates table
(`vggt.memory.device_rates`): stated rates until `python -m profiling.gpu_check --adopt`
commits a measured one, so every prediction says which it used.

The stated default: 300 TFLOP/s of bf16 work (matmuls and attention) on an H100 or H200 under
PyTorch's SDPA, fp32 work (the heads, the fp32 precision) at a quarter of it, and 50 GB/s each
rank sends and receives in an exchange (a 400 Gb/s link per GPU between nodes; NVLink inside a
node is faster, so this is the slower case)."""

from dataclasses import dataclass

import torch

from vggt.memory.device_rates import DeviceRates, rates_for
from vggt.models.architecture import Architecture
from vggt.precision import Precision


@dataclass(frozen=True)
class ForwardTime:
    """Predicted seconds of one forward on the busiest rank: its compute, its exchanges, and
    the longest step between two of its exchanges (one global block), at `tflops` and
    `link_gbs`; `source` says where those rates come from (stated or measured)."""

    seconds: float
    compute_seconds: float
    exchange_seconds: float
    global_block_seconds: float
    tflops: float
    link_gbs: float
    source: str


def low_precision(precision: Precision) -> bool:
    """Whether the aggregator's matmuls run in 16 bits (under autocast or in 16-bit weights),
    at the bf16 rate; else at its fp32 share."""
    return precision.autocast_dtype is not None or precision.weights_dtype != torch.float32


def exchange_bytes(
    tokens: int,
    width: int,
    element_bytes: int,
    world_size: int,
    attention: str,
    ranks_per_node: int | None = None,
) -> float:
    """Bytes one rank sends per global block: Ulysses re-shards K, V and Q to heads and the
    output back, 4 (W-1)/W² of the tokens' rows; ring passes K and V round, 2 (W-1)/W; hybrid,
    U ranks on each of N nodes, does Ulysses' inside a node, 4 (U-1)/U of its own T/W rows, and
    passes its heads' K and V of its node's tokens, T/W rows each, to the N-1 other nodes."""
    if world_size == 1:
        return 0.0
    if attention == "ulysses":
        share = 4 * (world_size - 1) / world_size**2
    elif attention == "ring":
        share = 2 * (world_size - 1) / world_size
    else:
        per_node = ranks_per_node or world_size
        nodes = world_size // per_node
        share = (4 * (per_node - 1) / per_node + 2 * (nodes - 1)) / world_size
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
    ranks_per_node: int | None = None,
    tflops: float | None = None,
    link_gbs: float | None = None,
    rates: DeviceRates | None = None,
) -> ForwardTime:
    """The prediction for `frames` images of height x width over `world_size` ranks (the
    busiest holds ceil(frames / W) of them and 1/W of global attention), `ranks_per_node` on
    each node (None: one node), with the dense heads when `heads`, at `rates` (default: the
    table's for an unknown device, stated), `tflops` and `link_gbs` in place of theirs when
    given."""
    rates = (rates or rates_for(None)).given(tflops, link_gbs)
    low = low_precision(precision)
    fp32_rate = rates.tflops * 1e12 * rates.fp32_share
    rate = rates.tflops * 1e12 if low else fp32_rate
    link = rates.link_gbs * 1e9
    share = -(-frames // world_size) / frames
    compute = architecture.aggregator_flops(frames, height, width) * share / rate
    if heads:
        compute += architecture.heads_flops(frames, height, width) * share / fp32_rate
    tokens = frames * architecture.tokens_per_frame(height, width)
    element_bytes = 2 if low else 4
    per_block = exchange_bytes(
        tokens, architecture.embed_dim, element_bytes, world_size, attention, ranks_per_node
    )
    exchange = architecture.depth * per_block / link
    one_block = architecture.global_block_flops(frames, height, width) * share
    block = one_block / rate + per_block / link
    return ForwardTime(
        compute + exchange,
        compute,
        exchange,
        block,
        rates.tflops,
        rates.link_gbs,
        rates.describe(),
    )

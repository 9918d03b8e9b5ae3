"""A global-attention block split over ranks by K/V blocks passed round a ring.

Each rank keeps the queries of its own tokens and, in `world_size` steps, attends them to one
rank's keys and values after another while the next block is already in flight; partial
results are merged exactly with their log-sum-exp. Any number of ranks works; every rank holds
its own q, k, v, one incoming K/V block and a float32 output accumulator.
"""

import torch

from vggt.layers.attention import attention_dtype
from vggt.layers.attention_backends import attention_with_log_sum
from vggt.layers.block import Block
from vggt.parallel.group import FrameLayout, SequenceGroup
from vggt.streaming.blocks import WriteGuard, add_attention_, add_mlp_
from vggt.streaming.chunks import chunk_bounds


def ring_block_(
    block: Block,
    x: torch.Tensor,
    pos: torch.Tensor | None,
    chunk_tokens: int,
    layout: FrameLayout,
    group: SequenceGroup,
    guard: WriteGuard,
) -> None:
    """Run global block `block` in place on this rank's tokens x [B, T_rank, C]."""
    attn = block.attn
    batch, local_tokens, _ = x.shape
    per_frame = local_tokens // layout.local
    chunks = list(chunk_bounds(local_tokens, max(1, chunk_tokens // batch)))
    queries = current = None
    for start, end in chunks:
        part_pos = None if pos is None else pos[:, start:end]
        q, k, v = attn.project(block.norm1(x[:, start:end]), part_pos, rotate_inplace=True)
        if queries is None:
            shape, dtype = (batch, attn.num_heads, local_tokens, attn.head_dim), attention_dtype(v)
            queries = x.new_empty(shape, dtype=dtype)
            current = x.new_empty((2, *shape), dtype=dtype)
        queries[:, :, start:end] = q
        current[0, :, :, start:end] = k
        current[1, :, :, start:end] = v
        del q, k, v
    output = x.new_zeros(queries.shape, dtype=torch.float32)
    log_sum = x.new_full(queries.shape[:3], float("-inf"), dtype=torch.float32)
    heads_dtype = queries.dtype
    for step in range(group.world_size):
        source = (group.rank - step - 1) % group.world_size
        incoming = None
        if step + 1 < group.world_size:
            shape = (2, batch, attn.num_heads, layout.counts[source] * per_frame, attn.head_dim)
            incoming = current.new_empty(shape)
            pending = group.ring_shift(current, incoming)
        for start, end in chunks:
            part, part_log_sum = attention_with_log_sum(queries[:, :, start:end], *current)
            _merge_(output[:, :, start:end], log_sum[:, :, start:end], part, part_log_sum)
            del part, part_log_sum
        if incoming is not None:
            pending.wait()
        current = incoming
    del queries, log_sum
    for start, end in chunks:
        guard((batch - 1) * local_tokens + end)
        rows = x[:, start:end]
        add_attention_(block, rows, [output[:, :, start:end].to(heads_dtype)])
        add_mlp_(block, rows)


def _merge_(
    output: torch.Tensor, log_sum: torch.Tensor, part: torch.Tensor, part_log_sum: torch.Tensor
) -> None:
    """Fold a partial attention result into the running one, in place (softmax merging)."""
    total = torch.logaddexp(log_sum, part_log_sum)
    output.mul_((log_sum - total).exp_().unsqueeze(-1))
    output.add_(part.float() * (part_log_sum - total).exp_().unsqueeze(-1))
    log_sum.copy_(total)

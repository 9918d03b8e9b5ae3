"""A global-attention block split over ranks by K/V blocks passed round a ring.

Each rank keeps the queries of its own tokens and, in `world_size` steps, attends them to one
rank's keys and values after another while the next block is already in flight; partial
results are merged exactly with their log-sum-exp. Any number of ranks works; every rank holds
its own q, k, v, one incoming K/V block and a float32 output accumulator. `ring_attention` is
also the outer level of the hybrid scheme (`vggt.parallel.hybrid`).
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
    rows = max(1, chunk_tokens // batch)
    queries, held = None, []
    for start, end in chunk_bounds(local_tokens, rows):
        part_pos = None if pos is None else pos[:, start:end]
        q, k, v = attn.project(block.norm1(x[:, start:end]), part_pos, rotate_inplace=True)
        if queries is None:
            shape, dtype = (batch, attn.num_heads, local_tokens, attn.head_dim), attention_dtype(v)
            queries = x.new_empty(shape, dtype=dtype)
            held.append(x.new_empty((2, *shape), dtype=dtype))
        queries[:, :, start:end] = q
        held[0][0, :, :, start:end] = k
        held[0][1, :, :, start:end] = v
        del q, k, v
    block_tokens = [count * per_frame for count in layout.counts]
    output = ring_attention(queries, held, group, block_tokens, rows)
    heads_dtype = queries.dtype
    del queries
    for start, end in chunk_bounds(local_tokens, rows):
        guard((batch - 1) * local_tokens + end)
        part = x[:, start:end]
        add_attention_(block, part, [output[:, :, start:end].to(heads_dtype)])
        add_mlp_(block, part)


def ring_attention(
    queries: torch.Tensor,
    held: list[torch.Tensor],
    group: SequenceGroup,
    block_tokens: list[int],
    rows: int,
) -> torch.Tensor:
    """queries [B, h, T, D] attended to the keys and values of every rank of `group`, in float32
    [B, h, T, D]. `held` holds this rank's K/V [2, B, h, block_tokens[rank], D]; it is taken
    out of the list, so that it is freed once passed on. Queries go `rows` at a time."""
    current = held.pop()
    output = queries.new_zeros(queries.shape, dtype=torch.float32)
    log_sum = queries.new_full(queries.shape[:3], float("-inf"), dtype=torch.float32)
    chunks = list(chunk_bounds(queries.shape[2], rows))
    for step in range(group.world_size):
        source = (group.rank - step - 1) % group.world_size
        incoming = None
        if step + 1 < group.world_size:
            incoming = current.new_empty(
                (*current.shape[:3], block_tokens[source], *current.shape[4:])
            )
            pending = group.ring_shift(current, incoming)
        for start, end in chunks:
            part, part_log_sum = attention_with_log_sum(queries[:, :, start:end], *current)
            _merge_(output[:, :, start:end], log_sum[:, :, start:end], part, part_log_sum)
            del part, part_log_sum
        if incoming is not None:
            pending.wait()
        current = incoming
    return output


def _merge_(
    output: torch.Tensor, log_sum: torch.Tensor, part: torch.Tensor, part_log_sum: torch.Tensor
) -> None:
    """Fold a partial attention result into the running one, in place (softmax merging)."""
    total = torch.logaddexp(log_sum, part_log_sum)
    output.mul_((log_sum - total).exp_().unsqueeze(-1))
    output.add_(part.float() * (part_log_sum - total).exp_().unsqueeze(-1))
    log_sum.copy_(total)

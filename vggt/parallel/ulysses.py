"""A global-attention block split over ranks by heads (the "Ulysses" scheme).

Each rank projects k and v for its own frames' tokens, chunk by chunk, and an all-to-all
gives every rank its share of the heads for all tokens of the sequence. Then, chunk by chunk,
each rank projects its queries, an all-to-all sends every rank its heads of them (so no rank
keeps the whole sequence's queries), attention runs per head over the whole sequence with the
ordinary kernel (no softmax merging), and a third all-to-all returns the chunk's output, all
heads, to the rank that owns the tokens, which finishes the block there (output projection,
residual, MLP) in place. Ranks may hold different
token counts and head counts (16 heads over 3 ranks: 5, 5, 6); every rank makes the same
number of exchanges, some possibly empty.
"""

import itertools

import torch

from vggt.layers.attention import Attention, attention_dtype
from vggt.layers.block import Block
from vggt.parallel.group import FrameLayout, SequenceGroup, split_evenly, starts
from vggt.streaming.blocks import WriteGuard, add_attention_, add_mlp_
from vggt.streaming.chunks import chunk_count


def ulysses_block_(
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
    tokens = [count * (local_tokens // layout.local) for count in layout.counts]
    heads = split_evenly(attn.num_heads, group.world_size)
    pieces = chunk_count(batch * max(tokens), chunk_tokens)
    bounds = [_piece_bounds(count, pieces) for count in tokens]
    mine, dim = group.rank, attn.head_dim
    token_offsets = starts(tokens)
    head_ranges = list(zip(starts(heads), heads, strict=True))
    shape = (batch, heads[mine], sum(tokens), dim)
    keys = values = None
    for piece in range(pieces):
        start, end = bounds[mine][piece]
        part_pos = None if pos is None else pos[:, start:end]
        kv = attn.project(block.norm1(x[:, start:end]), part_pos, "kv", rotate_inplace=True)
        dtype = attention_dtype(kv[1])
        if keys is None:
            keys, values = (x.new_empty(shape, dtype=dtype) for _ in range(2))
        outgoing = [[t[:, h : h + n] for t in kv] for h, n in head_ranges]
        incoming = [(2, batch, heads[mine], b - a, dim) for a, b in _column(bounds, piece)]
        received = group.exchange(outgoing, incoming, dtype)
        del kv, outgoing
        for source, part in enumerate(received):
            a, b = bounds[source][piece]
            rows = slice(token_offsets[source] + a, token_offsets[source] + b)
            keys[:, :, rows], values[:, :, rows] = part
        del received
    for piece in range(pieces):
        start, end = bounds[mine][piece]
        part_pos = None if pos is None else pos[:, start:end]
        (q,) = attn.project(block.norm1(x[:, start:end]), part_pos, "q", rotate_inplace=True)
        outgoing = [[q[:, h : h + n]] for h, n in head_ranges]
        column = _column(bounds, piece)
        incoming = [(batch, heads[mine], b - a, dim) for a, b in column]
        received = group.exchange(outgoing, incoming, keys.dtype)
        del q, outgoing
        outputs = [_attend(attn, part, keys, values) for part in received]
        del received
        incoming = [(1, batch, n, end - start, dim) for n in heads]
        received = group.exchange([[t] for t in outputs], incoming, outputs[0].dtype)
        del outputs
        if end == start:
            continue
        heads_out = [torch.cat([part[0] for part in received], dim=1)]
        del received
        guard((batch - 1) * local_tokens + end)
        rows = x[:, start:end]
        add_attention_(block, rows, heads_out)
        add_mlp_(block, rows)


def _attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """attn.attend, or an empty output for no queries."""
    if q.shape[2] == 0:
        return q.new_empty(q.shape)
    return attn.attend(q, k, v)


def _piece_bounds(count: int, pieces: int) -> list[tuple[int, int]]:
    """`pieces` consecutive (start, end) ranges over range(count), near-equal, maybe empty."""
    return list(itertools.pairwise([*starts(split_evenly(count, pieces)), count]))


def _column(bounds: list[list[tuple[int, int]]], piece: int) -> list[tuple[int, int]]:
    """Every rank's range of exchange `piece`, in rank order."""
    return [ranges[piece] for ranges in bounds]

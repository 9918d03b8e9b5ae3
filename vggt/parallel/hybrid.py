"""A global-attention block split over nodes of ranks: Ulysses inside each node, a ring
between nodes (the hybrid of the USP paper).

Inside a node, all-to-alls give each rank its share of the heads for all of the node's tokens
(its queries whole, its keys and values); between nodes, the ranks at the same place on every
node, which hold the same heads, pass their K/V blocks round a ring and merge partial results
by their log-sum-exp; a last all-to-all inside the node returns each token's output, all
heads, to its own rank, which finishes the block in place. Only the ring's K/V blocks cross
nodes; the heavier all-to-alls stay on the node's own links.
"""

import torch

from vggt.layers.block import Block
from vggt.parallel.group import FrameLayout, SequenceGroup
from vggt.parallel.ring import ring_attention
from vggt.parallel.ulysses import (
    HeadShare,
    finish_piece_,
    gather_keys_values,
    overlapped_chunk,
    pipeline,
    send_outputs,
    send_queries,
)
from vggt.streaming.blocks import WriteGuard


def hybrid_block_(
    block: Block,
    x: torch.Tensor,
    pos: torch.Tensor | None,
    chunk_tokens: int,
    layout: FrameLayout,
    group: SequenceGroup,
    guard: WriteGuard,
) -> None:
    """Run global block `block` in place on this rank's tokens x [B, T_rank, C]."""
    within, across = group.by_node()
    attn, batch, size = block.attn, x.shape[0], within.world_size
    per_frame = x.shape[1] // layout.local
    tokens = [count * per_frame for count in layout.counts]
    node_tokens = [sum(tokens[first : first + size]) for first in range(0, len(tokens), size)]
    mine = tokens[across.rank * size : (across.rank + 1) * size]
    share = HeadShare.plan(mine, attn.num_heads, batch, overlapped_chunk(chunk_tokens, group))
    heads, ahead = share.heads[within.rank], int(group.overlap)
    queries, sent = None, {}

    def start(piece: int) -> None:
        sent[piece] = send_queries(block, x, pos, share, within, piece)

    def keep(piece: int) -> None:
        nonlocal queries
        parts = sent.pop(piece).wait()
        if queries is None:
            queries = parts[0].new_empty((batch, heads, sum(mine), attn.head_dim))
        for source, part in enumerate(parts):
            queries[:, :, share.rows(source, piece)] = part

    pipeline(share.pieces, ahead, (start, keep))
    within.release("q")
    rows = max(1, chunk_tokens // batch) * attn.num_heads // heads
    held = [gather_keys_values(block, x, pos, share, within, ahead)]
    output = ring_attention(queries, held, across, node_tokens, rows)
    heads_dtype = queries.dtype
    del queries

    def send(piece: int) -> None:
        parts = [output[:, :, share.rows(r, piece)].to(heads_dtype) for r in range(size)]
        sent[piece] = send_outputs(x, share, within, piece, parts)

    def finish(piece: int) -> None:
        finish_piece_(block, x, share, within, piece, sent.pop(piece).wait(), guard)

    pipeline(share.pieces, ahead, (send, finish))

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
from vggt.parallel.ulysses import HeadShare, finish_piece_, gather_keys_values, gather_queries
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
    share = HeadShare.plan(mine, attn.num_heads, batch, chunk_tokens)
    heads = share.heads[within.rank]
    queries = None
    for piece in range(share.pieces):
        parts = gather_queries(block, x, pos, share, within, piece)
        if queries is None:
            queries = parts[0].new_empty((batch, heads, sum(mine), attn.head_dim))
        for source, part in enumerate(parts):
            queries[:, :, share.rows(source, piece)] = part
        del parts
    rows = max(1, chunk_tokens // batch) * attn.num_heads // heads
    held = [gather_keys_values(block, x, pos, share, within)]
    output = ring_attention(queries, held, across, node_tokens, rows)
    heads_dtype = queries.dtype
    del queries
    for piece in range(share.pieces):
        outputs = [
            output[:, :, share.rows(source, piece)].to(heads_dtype) for source in range(size)
        ]
        finish_piece_(block, x, share, within, piece, outputs, guard)

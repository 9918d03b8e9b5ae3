"""A global-attention block split over ranks by heads (the "Ulysses" scheme).

Each rank projects k and v for its own frames' tokens, chunk by chunk, and an all-to-all
gives every rank its share of the heads for all tokens of the sequence. Then, chunk by chunk,
each rank projects its queries, an all-to-all sends every rank its heads of them (so no rank
keeps the whole sequence's queries), attention runs per head over the whole sequence with the
ordinary kernel (no softmax merging), and a third all-to-all returns the chunk's output, all
heads, to the rank that owns the tokens, which finishes the block there (output projection,
residual, MLP) in place. Ranks may hold different token counts and head counts (16 heads over
3 ranks: 5, 5, 6); every rank makes the same number of exchanges, some possibly empty.

The three exchanges are also the inner level of the hybrid scheme (`vggt.parallel.hybrid`).
"""

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from vggt.layers.attention import Attention, attention_dtype
from vggt.layers.block import Block
from vggt.parallel.group import FrameLayout, SequenceGroup, Transfer, split_evenly, starts
from vggt.streaming.blocks import WriteGuard, add_attention_, add_mlp_
from vggt.streaming.chunks import chunk_count


@dataclass(frozen=True)
class HeadShare:
    """How the ranks of one all-to-all group split heads and exchange tokens: `tokens[r]` and
    `heads[r]` of group rank r, and `bounds[r][piece]`, the (start, end) of r's own tokens
    sent in exchange `piece` (every rank makes `pieces` exchanges, some maybe empty)."""

    tokens: tuple[int, ...]
    heads: tuple[int, ...]
    bounds: tuple[tuple[tuple[int, int], ...], ...]

    @classmethod
    def plan(cls, tokens: list[int], num_heads: int, batch: int, chunk_tokens: int) -> "HeadShare":
        """Heads split evenly over the group's ranks; each rank's tokens in as many
        near-equal pieces as the largest rank's needs for chunks of `chunk_tokens` rows."""
        pieces = chunk_count(batch * max(tokens), chunk_tokens)
        bounds = tuple(_piece_bounds(count, pieces) for count in tokens)
        return cls(tuple(tokens), tuple(split_evenly(num_heads, len(tokens))), bounds)

    @property
    def pieces(self) -> int:
        """Exchanges per phase."""
        return len(self.bounds[0])

    def rows(self, source: int, piece: int) -> slice:
        """Where rank `source`'s tokens of exchange `piece` lie among all the group's tokens."""
        start, end = self.bounds[source][piece]
        offset = starts(self.tokens)[source]
        return slice(offset + start, offset + end)

    def column(self, piece: int) -> list[tuple[int, int]]:
        """Every rank's (start, end) of exchange `piece`, in rank order."""
        return [ranges[piece] for ranges in self.bounds]

    def head_ranges(self) -> list[tuple[int, int]]:
        """(first head, head count) of each rank."""
        return list(zip(starts(self.heads), self.heads, strict=True))


def ulysses_block_(
    block: Block,
    x: torch.Tensor,
    pos: torch.Tensor | None,
    chunk_tokens: int,
    layout: FrameLayout,
    group: SequenceGroup,
    guard: WriteGuard,
) -> None:
    """Run global block `block` in place on this rank's tokens x [B, T_rank, C]; with the
    group's `overlap`, piece p's queries are in flight while piece p-1 attends and its output
    is in flight while piece p-2 finishes."""
    attn = block.attn
    per_frame = x.shape[1] // layout.local
    tokens = [count * per_frame for count in layout.counts]
    share = HeadShare.plan(
        tokens, attn.num_heads, x.shape[0], overlapped_chunk(chunk_tokens, group)
    )
    ahead = int(group.overlap)
    keys, values = gather_keys_values(block, x, pos, share, group, ahead)
    queries: dict[int, Transfer] = {}
    outputs: dict[int, Transfer] = {}

    def attend(piece: int) -> None:
        heads = [_attend(attn, part, keys, values) for part in queries.pop(piece).wait()]
        outputs[piece] = send_outputs(x, share, group, piece, heads)

    def start(piece: int) -> None:
        queries[piece] = send_queries(block, x, pos, share, group, piece)

    def finish(piece: int) -> None:
        finish_piece_(block, x, share, group, piece, outputs.pop(piece).wait(), guard)

    pipeline(share.pieces, ahead, (start, attend, finish))


def pipeline(pieces: int, ahead: int, stages: Sequence[Callable[[int], None]]) -> None:
    """Run every stage on pieces 0, 1, ...: stage k of piece p at step p + k * ahead, the
    stages of one step in order. With `ahead` 1 a piece's exchange, started by one stage, is
    in flight while the next piece's stage before it runs; with 0 each piece goes through
    every stage before the next starts."""
    for step in range(pieces + ahead * (len(stages) - 1)):
        for stage_index, stage in enumerate(stages):
            piece = step - stage_index * ahead
            if 0 <= piece < pieces:
                stage(piece)


def overlapped_chunk(chunk_tokens: int, group: SequenceGroup) -> int:
    """Tokens per exchanged piece: half a chunk when exchanges overlap compute, so that their
    two sets of buffers hold what one set held without overlap."""
    return max(1, chunk_tokens // 2) if group.overlap else chunk_tokens


def gather_keys_values(
    block: Block,
    x: torch.Tensor,
    pos: torch.Tensor | None,
    share: HeadShare,
    group: SequenceGroup,
    ahead: int = 1,
) -> torch.Tensor:
    """Keys and values [2, B, heads_mine, T_group, D] of this rank's heads for every token of
    the group, projected piece by piece from each rank's own tokens; `ahead` 1 projects the
    next piece while the last one's exchange is in flight, 0 waits for each."""
    attn, batch, mine, dim = block.attn, x.shape[0], group.rank, block.attn.head_dim
    kv_all = None
    sent: dict[int, Transfer] = {}

    def project(piece: int) -> None:
        nonlocal kv_all
        first, last = share.bounds[mine][piece]
        part_pos = None if pos is None else pos[:, first:last]
        kv = attn.project(block.norm1(x[:, first:last]), part_pos, "kv", rotate_inplace=True)
        dtype = attention_dtype(kv[1])
        if kv_all is None:
            shape = (2, batch, share.heads[mine], sum(share.tokens), dim)
            kv_all = x.new_empty(shape, dtype=dtype)
        outgoing = [[t[:, h : h + n] for t in kv] for h, n in share.head_ranges()]
        incoming = [(2, batch, share.heads[mine], b - a, dim) for a, b in share.column(piece)]
        sent[piece] = group.exchange(outgoing, incoming, dtype, f"kv{group.slot(piece)}")

    def keep(piece: int) -> None:
        for source, part in enumerate(sent.pop(piece).wait()):
            kv_all[:, :, :, share.rows(source, piece)] = part

    pipeline(share.pieces, ahead, (project, keep))
    # The queries' and outputs' exchanges are half as large: their buffers replace these.
    group.release("kv")
    return kv_all


def send_queries(
    block: Block,
    x: torch.Tensor,
    pos: torch.Tensor | None,
    share: HeadShare,
    group: SequenceGroup,
    piece: int,
) -> Transfer:
    """Start exchange `piece` of the queries, projected here from this rank's own tokens of
    it; its `wait()` gives rank r's tokens of it [B, heads_mine, rows_r, D] for every rank r,
    views of an exchange buffer that the exchange of piece + 2 (with overlap, else + 1)
    reuses."""
    attn, batch, dim = block.attn, x.shape[0], block.attn.head_dim
    start, end = share.bounds[group.rank][piece]
    part_pos = None if pos is None else pos[:, start:end]
    (q,) = attn.project(block.norm1(x[:, start:end]), part_pos, "q", rotate_inplace=True)
    outgoing = [[q[:, h : h + n]] for h, n in share.head_ranges()]
    mine = share.heads[group.rank]
    incoming = [(batch, mine, b - a, dim) for a, b in share.column(piece)]
    return group.exchange(outgoing, incoming, attention_dtype(q), f"q{group.slot(piece)}")


def send_outputs(
    x: torch.Tensor, share: HeadShare, group: SequenceGroup, piece: int, heads: list[torch.Tensor]
) -> Transfer:
    """Start sending each rank r its tokens' attention output of `piece` for this rank's heads
    (`heads[r]` [B, heads_mine, rows_r, D]); its `wait()` gives this rank's rows of the piece
    from every rank's heads."""
    batch = x.shape[0]
    start, end = share.bounds[group.rank][piece]
    incoming = [(1, batch, n, end - start, heads[0].shape[-1]) for n in share.heads]
    return group.exchange([[t] for t in heads], incoming, heads[0].dtype, f"out{group.slot(piece)}")


def finish_piece_(
    block: Block,
    x: torch.Tensor,
    share: HeadShare,
    group: SequenceGroup,
    piece: int,
    received: list[torch.Tensor],
    guard: WriteGuard,
) -> None:
    """Finish this rank's own rows of `piece` with every rank's heads of their attention
    output (`received`, from `send_outputs`): projection, residual and MLP, in place."""
    start, end = share.bounds[group.rank][piece]
    if end == start:
        return
    heads_out = [torch.cat([part[0] for part in received], dim=1)]
    del received
    guard((x.shape[0] - 1) * x.shape[1] + end)
    rows = x[:, start:end]
    add_attention_(block, rows, heads_out)
    add_mlp_(block, rows)


def _attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """attn.attend, or an empty output for no queries."""
    if q.shape[2] == 0:
        return q.new_empty(q.shape)
    return attn.attend(q, k, v)


def _piece_bounds(count: int, pieces: int) -> tuple[tuple[int, int], ...]:
    """`pieces` consecutive (start, end) ranges over range(count), near-equal, maybe empty."""
    return tuple(itertools.pairwise([*starts(split_evenly(count, pieces)), count]))

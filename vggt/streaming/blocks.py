"""Transformer blocks run in place on the residual stream, a chunk of tokens at a time.

Same math as `Block.forward`, built from the block's own pieces (`Attention.project`,
`attend`, `merge`, the MLP), but the residual adds go into the stream itself and no
temporary covers more than one chunk, except a long group's K and V. Autograd must be off.
"""

from collections.abc import Callable

import torch

from vggt.layers.block import Block
from vggt.layers.mlp import Mlp
from vggt.streaming.chunks import ChunkPolicy, chunk_bounds, chunk_count

WriteGuard = Callable[[int], None]


def run_block_(
    block: Block,
    x: torch.Tensor,
    pos: torch.Tensor | None,
    chunk_tokens: int,
    before_write: WriteGuard | None = None,
) -> torch.Tensor:
    """Run `block` on x [G, N, C] (G independent groups of N tokens) in place; returns x.

    Groups of about `chunk_tokens` tokens or fewer run a few at a time; a group that makes
    several chunks has its q, K and V built chunk by chunk, then its attention and MLP run
    chunk by chunk against them. Before
    overwriting the rows below flat token `end` (of x seen as [G * N, C]) it calls
    `before_write(end)`, so copies still reading them can finish first.
    """
    if torch.is_grad_enabled():
        raise RuntimeError("blocks run in place only with autograd off (torch.no_grad())")
    guard = before_write or no_guard
    groups, tokens, _ = x.shape
    if chunk_count(tokens, chunk_tokens) > 1:
        for group in range(groups):
            part_pos = None if pos is None else pos[group : group + 1]
            _stream_group_(
                block, x[group : group + 1], part_pos, chunk_tokens, group * tokens, guard
            )
        return x
    for start, end in chunk_bounds(groups, max(1, round(chunk_tokens / tokens))):
        part_pos = None if pos is None else pos[start:end]
        guard(end * tokens)
        _whole_groups_(block, x[start:end], part_pos)
    return x


def no_guard(end: int) -> None:
    """The guard when no copy reads the stream."""


def _whole_groups_(block: Block, x: torch.Tensor, pos: torch.Tensor | None) -> None:
    """The block on whole groups x [g, N, C]: one fused qkv projection, attention, residuals."""
    qkv = block.attn.project(block.norm1(x), pos, rotate_inplace=True)
    add_attention_(block, x, _attend(block, qkv))
    add_mlp_(block, x)


def _stream_group_(
    block: Block,
    x: torch.Tensor,
    pos: torch.Tensor | None,
    chunk: int,
    offset: int,
    guard: WriteGuard,
) -> None:
    """The block on one long group x [1, N, C] starting at flat token `offset`: K/V chunk by
    chunk, then per chunk its queries (projected then, from rows not yet overwritten, so no
    group-long query buffer is kept), attention and MLP."""
    attn = block.attn
    tokens = x.shape[1]
    keys = values = None
    for start, end in chunk_bounds(tokens, chunk):
        part_pos = None if pos is None else pos[:, start:end]
        k, v = attn.project(block.norm1(x[:, start:end]), part_pos, "kv", rotate_inplace=True)
        if keys is None:
            shape = (*k.shape[:2], tokens, k.shape[-1])
            keys, values = k.new_empty(shape), v.new_empty(shape)
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        del k, v
    for start, end in chunk_bounds(tokens, chunk):
        part_pos = None if pos is None else pos[:, start:end]
        rows = x[:, start:end]
        q = attn.project(block.norm1(rows), part_pos, "q", rotate_inplace=True)
        guard(offset + end)
        add_attention_(block, rows, _attend(block, [*q, keys, values]))
        add_mlp_(block, rows)


def _attend(block: Block, qkv: list[torch.Tensor]) -> list[torch.Tensor]:
    """[attention of q, k, v] as a one-item list; empties `qkv`, so q is freed once used."""
    heads = block.attn.attend(*qkv)
    qkv.clear()
    return [heads]


def add_attention_(block: Block, rows: torch.Tensor, heads: list[torch.Tensor]) -> None:
    """rows += ls1(proj(attention output)); `heads` holds the output [B, heads, n, D] and is
    emptied, so it is freed as soon as it is projected."""
    attn_out = block.attn.merge(heads.pop())
    rows.add_(block.drop_path1(block.ls1(attn_out)))


def add_mlp_(block: Block, rows: torch.Tensor) -> None:
    """rows += ls2(mlp(norm2(rows))), the MLP's GELU applied in place."""
    normed = block.norm2(rows)
    hidden = block.mlp(normed, inplace=True) if isinstance(block.mlp, Mlp) else block.mlp(normed)
    del normed
    rows.add_(block.drop_path2(block.ls2(hidden)))


class StreamedBlocks:
    """A block runner for inference: `run_block_` with the chunk size `policy` gives the
    stream (all G x N tokens of the call) and the current `before_write` guard, if any."""

    def __init__(self, policy: ChunkPolicy) -> None:
        self.policy = policy
        self.before_write: WriteGuard | None = None

    def __call__(
        self,
        block: Block,
        x: torch.Tensor,
        pos: torch.Tensor | None,
        across_frames: bool = False,
    ) -> torch.Tensor:
        """Run `block` on x [G, N, C]; `across_frames` (global attention) makes no difference
        on one device."""
        chunk = self.policy.chunk_tokens(x.shape[0] * x.shape[1], x.device, x.shape[-1])
        return run_block_(block, x, pos, chunk, self.before_write)

    def with_autograd(
        self, block: Block, across_frames: bool = False
    ) -> Callable[..., torch.Tensor]:
        """What runs `block` under autograd: the block itself, on one device."""
        return block

"""A sequence split over ranks under autograd: exchanges whose backward is the reverse
exchange, and the global block built from them, so the split trains as one device does.

Global attention under autograd is Ulysses': each rank projects its own tokens, an all-to-all
gives every rank all the tokens of its share of the heads, it attends, and a second all-to-all
brings the outputs back; in backward the gradients travel the same ways reversed.
"""

from dataclasses import dataclass
from math import prod

import torch

from vggt.layers.block import Block
from vggt.parallel.group import FrameLayout, SequenceGroup, split_evenly


@dataclass(frozen=True)
class HeadExchange:
    """The all-to-all between tokens split over ranks ([..., H, n_rank, D] on each) and heads
    split over ranks ([..., h_rank, N, D] on each): `tokens` and `heads` per rank."""

    group: SequenceGroup
    tokens: tuple[int, ...]
    heads: tuple[int, ...]

    def move(self, x: torch.Tensor, to_heads: bool) -> torch.Tensor:
        """x with tokens split over ranks -> heads split (`to_heads`), or the way back."""
        rank, leading = self.group.rank, x.shape[:-3]
        width = x.shape[-1]
        if to_heads:
            pieces = x.split(self.heads, dim=-3)
            incoming = [(*leading, self.heads[rank], n, width) for n in self.tokens]
            joined = -2
        else:
            pieces = x.split(self.tokens, dim=-2)
            incoming = [(*leading, h, self.tokens[rank], width) for h in self.heads]
            joined = -3
        source = torch.cat([piece.reshape(-1) for piece in pieces])
        sent = [piece.numel() for piece in pieces]
        received = [prod(shape) for shape in incoming]
        output = x.new_empty(sum(received))
        self.group.all_to_all(output, source, received, sent).wait()
        parts = output.split(received)
        return torch.cat(
            [part.view(shape) for part, shape in zip(parts, incoming, strict=True)], dim=joined
        )


class _Redistribute(torch.autograd.Function):
    """`HeadExchange.move` one way; its backward moves the gradient the other way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, exchange: HeadExchange, to_heads: bool) -> torch.Tensor:
        ctx.exchange, ctx.to_heads = exchange, to_heads
        return exchange.move(x, to_heads)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return ctx.exchange.move(grad.contiguous(), not ctx.to_heads), None, None


def ulysses_block(
    block: Block,
    x: torch.Tensor,
    pos: torch.Tensor | None,
    group: SequenceGroup,
    layout: FrameLayout,
) -> torch.Tensor:
    """`block` as a global block over every rank's tokens, x [B, n_local x P, C] this rank's,
    differentiable: `Block.forward` with its attention's heads split over the ranks."""
    attn = block.attn
    per_frame = x.shape[1] // layout.local
    tokens = tuple(count * per_frame for count in layout.counts)
    exchange = HeadExchange(group, tokens, tuple(split_evenly(attn.num_heads, group.world_size)))
    qkv = attn.project(block.norm1(x), pos)
    q, k, v = (_Redistribute.apply(t, exchange, True) for t in qkv)
    del qkv
    heads = _Redistribute.apply(attn.attend(q, k, v), exchange, False)
    x = x + block.drop_path1(block.ls1(attn.merge(heads)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


class _GatherFrames(torch.autograd.Function):
    """Every rank's frames joined in rank order; backward sums each rank's gradient for this
    rank's frames (every rank used all of them)."""

    @staticmethod
    def forward(
        ctx, local: torch.Tensor, group: SequenceGroup, layout: FrameLayout
    ) -> torch.Tensor:
        ctx.group, ctx.layout = group, layout
        return group.all_gather_frames(local, layout)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        group, layout = ctx.group, ctx.layout
        pieces = [piece.contiguous() for piece in grad.split(list(layout.counts), dim=1)]
        mine = pieces[group.rank].shape
        source = torch.cat([piece.reshape(-1) for piece in pieces])
        sent = [piece.numel() for piece in pieces]
        output = grad.new_empty(prod(mine) * group.world_size)
        group.all_to_all(output, source, [prod(mine)] * group.world_size, sent).wait()
        return output.view(group.world_size, *mine).sum(0), None, None


def gather_frames(local: torch.Tensor, group: SequenceGroup, layout: FrameLayout) -> torch.Tensor:
    """Every rank's [B, n_rank, ...] tensor joined along dim 1 in rank order, differentiable."""
    return _GatherFrames.apply(local, group, layout)

"""The block runner of a sequence split over ranks: frame blocks run on each rank's own
frames as on one device; global blocks attend across the ranks."""

from collections.abc import Callable
from functools import partial

import torch

from vggt.layers.block import Block
from vggt.parallel.autograd import ulysses_block
from vggt.parallel.group import FrameLayout, SequenceGroup
from vggt.parallel.hybrid import hybrid_block_
from vggt.parallel.ring import ring_block_
from vggt.parallel.ulysses import ulysses_block_
from vggt.streaming.blocks import StreamedBlocks, no_guard
from vggt.streaming.chunks import ChunkPolicy

ATTENTIONS = {"ulysses": ulysses_block_, "ring": ring_block_, "hybrid": hybrid_block_}


def choose_attention(
    requested: str | None, world_size: int, heads: int, ranks_per_node: int | None = None
) -> str:
    """The global attention for a sequence over `world_size` ranks, `ranks_per_node` on each
    node (None: one node), of a model with `heads` heads: `requested`, or by default hybrid
    (ulysses inside nodes, ring between them) over several nodes of several ranks, at most
    `heads` each; else ulysses (less memory per rank, less traffic from 3 ranks on) unless
    there are more ranks than heads, then ring. ValueError for an unknown name or a split the
    heads or nodes do not allow."""
    per_node = ranks_per_node or world_size
    if requested is None:
        if 1 < per_node < world_size and per_node <= heads:
            return "hybrid"
        return "ulysses" if world_size <= heads else "ring"
    if requested not in ATTENTIONS:
        raise ValueError(f"unknown attention {requested!r}; choose from {', '.join(ATTENTIONS)}")
    if requested == "ulysses" and world_size > heads:
        raise ValueError(
            f"ulysses attention splits the model's {heads} heads over the ranks, so at most "
            f"{heads} ranks, not {world_size}: use ring attention"
        )
    if requested == "hybrid" and (world_size % per_node or per_node > heads):
        raise ValueError(
            f"hybrid attention splits the model's {heads} heads over each node's ranks and "
            f"needs whole nodes: {world_size} ranks, {per_node} per node do not allow it; "
            "use ring attention"
        )
    return requested


class SequenceParallelBlocks(StreamedBlocks):
    """`StreamedBlocks` whose global blocks span every rank's frames, by `attention`
    ("ulysses": the `heads` over ranks by all-to-all; "ring": K/V blocks passed round them;
    "hybrid": ulysses inside each node of the group, ring between nodes).

    `layout` (set by the aggregator for each forward) says how the frames lie over ranks.
    """

    def __init__(
        self, policy: ChunkPolicy, group: SequenceGroup, attention: str, heads: int
    ) -> None:
        super().__init__(policy)
        self.group = group
        self.attention = choose_attention(attention, group.world_size, heads, group.ranks_per_node)
        self.layout: FrameLayout | None = None

    def __call__(
        self,
        block: Block,
        x: torch.Tensor,
        pos: torch.Tensor | None,
        across_frames: bool = False,
    ) -> torch.Tensor:
        if not across_frames:
            return super().__call__(block, x, pos)
        if torch.is_grad_enabled() or self.layout is None:
            raise RuntimeError("sequence-parallel blocks run in inference only, in a forward")
        per_frame = x.shape[1] // self.layout.local
        largest = x.shape[0] * max(self.layout.counts) * per_frame
        chunk = self.policy.chunk_tokens(largest, x.device, x.shape[-1])
        guard = self.before_write or no_guard
        ATTENTIONS[self.attention](block, x, pos, chunk, self.layout, self.group, guard)
        return x

    def with_autograd(
        self, block: Block, across_frames: bool = False
    ) -> Callable[..., torch.Tensor]:
        """What runs `block` under autograd (training): a global block spans the ranks by
        Ulysses' exchanges (`vggt.parallel.autograd`), a frame block runs on this rank's."""
        if not across_frames:
            return block
        if self.attention != "ulysses":
            raise RuntimeError(
                f"training a sequence split over ranks runs ulysses attention, not "
                f"{self.attention} (at most as many ranks as heads)"
            )
        return partial(ulysses_block, block, group=self.group, layout=self.layout)

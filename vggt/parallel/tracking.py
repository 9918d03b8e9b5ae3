"""The tracker over a sequence split over ranks: each rank tracks the query points through
its own frames, and only per-(track, frame) tokens travel.

Correlation sampling, the track features and the space attention (across tracks, within a
frame) need nothing from other frames. The query features come from the first frame, on rank
0, broadcast ([B, N, C]). Each time block (attention across a track's frames) runs with the
tracks split over ranks instead of the frames: an all-to-all gives every rank all frames of
its share of the tracks, the block runs, and a second all-to-all returns each rank its frames
of every track, as Ulysses does with heads. Results stay on the rank whose frames they are.
"""

from dataclasses import dataclass

import torch
from torch import nn

from vggt.parallel.group import FrameLayout, SequenceGroup, split_evenly, starts


@dataclass
class SplitFrames:
    """This rank's frames (`layout`) of a sequence split over `group`, for the tracker
    (`vggt.heads.track_modules.base_track_predictor.FrameShare`)."""

    group: SequenceGroup
    layout: FrameLayout

    @property
    def holds_first_frame(self) -> bool:
        """Whether this rank's frames start the sequence (rank 0's do)."""
        return self.layout.start() == 0

    def from_first_frame(self, value: torch.Tensor) -> None:
        """Overwrite `value` (the query features of the first frame) with rank 0's."""
        self.group.broadcast(value)

    def across_time(self, block: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """`block` over every frame of each track, from and to this rank's frames of every
        track: tokens [B, N, T_rank, C] in, the same shape out."""
        batch, tracks, _, width = tokens.shape
        group, frames = self.group, list(self.layout.counts)
        shares = split_evenly(tracks, group.world_size)
        mine = shares[group.rank]
        outgoing = [[tokens[:, a : a + n]] for a, n in zip(starts(shares), shares, strict=True)]
        incoming = [(1, batch, mine, count, width) for count in frames]
        received = group.exchange(outgoing, incoming, tokens.dtype).wait()
        whole = torch.cat([part[0] for part in received], dim=2)
        del received, outgoing
        if mine:
            whole = block(whole.view(batch * mine, -1, width)).view(batch, mine, -1, width)
        outgoing = [[whole[:, :, a : a + n]] for a, n in zip(starts(frames), frames, strict=True)]
        incoming = [(1, batch, count, self.layout.local, width) for count in shares]
        received = group.exchange(outgoing, incoming, tokens.dtype).wait()
        return torch.cat([part[0] for part in received], dim=1)

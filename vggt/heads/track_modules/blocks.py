"""Tracker update transformer and multi-level correlation sampler."""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vggt.heads.track_modules.modules import AttnBlock, CrossAttnBlock
from vggt.heads.track_modules.utils import bilinear_sampler


class EfficientUpdateFormer(nn.Module):
    """Alternating time / space attention over tracks; virtual tracks mediate space attention."""

    def __init__(
        self,
        space_depth: int = 6,
        time_depth: int = 6,
        input_dim: int = 320,
        hidden_size: int = 384,
        num_heads: int = 8,
        output_dim: int = 130,
        mlp_ratio: float = 4.0,
        add_space_attn: bool = True,
        num_virtual_tracks: int = 64,
    ) -> None:
        super().__init__()
        self.out_channels = 2
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.add_space_attn = add_space_attn
        self.num_virtual_tracks = num_virtual_tracks

        # "virual_tracks" (sic) is the published checkpoint's parameter name.
        if add_space_attn:
            self.virual_tracks = nn.Parameter(torch.randn(1, num_virtual_tracks, 1, hidden_size))
        else:
            self.virual_tracks = None

        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden_size, bias=True)
        self.output_norm = nn.LayerNorm(hidden_size)
        self.flow_head = nn.Linear(hidden_size, output_dim, bias=True)

        self.time_blocks = nn.ModuleList(
            [
                AttnBlock(
                    hidden_size, num_heads, mlp_ratio=mlp_ratio, attn_class=nn.MultiheadAttention
                )
                for _ in range(time_depth)
            ]
        )
        if add_space_attn:
            if space_depth < 1 or time_depth < space_depth:
                raise ValueError("need 1 <= space_depth <= time_depth when add_space_attn is set")
            self.space_virtual_blocks = nn.ModuleList(
                [
                    AttnBlock(
                        hidden_size,
                        num_heads,
                        mlp_ratio=mlp_ratio,
                        attn_class=nn.MultiheadAttention,
                    )
                    for _ in range(space_depth)
                ]
            )
            self.space_point2virtual_blocks = nn.ModuleList(
                [
                    CrossAttnBlock(hidden_size, hidden_size, num_heads, mlp_ratio=mlp_ratio)
                    for _ in range(space_depth)
                ]
            )
            self.space_virtual2point_blocks = nn.ModuleList(
                [
                    CrossAttnBlock(hidden_size, hidden_size, num_heads, mlp_ratio=mlp_ratio)
                    for _ in range(space_depth)
                ]
            )
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform linear weights with zero biases; ``flow_head`` weight ~ N(0, 0.001).

        The normal draw is clamped to [-2, 2] instead of resampled, so no step reads tensor values
        (construction works on meta and fake tensors); at std 0.001 the two never differ.
        """

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        with torch.no_grad():
            nn.init.normal_(self.flow_head.weight, std=0.001).clamp_(-2.0, 2.0)

    def forward(
        self,
        input_tensor: torch.Tensor,
        mask: torch.Tensor | None = None,
        across_time: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, None]:
        """``input_tensor (B, N, T, input_dim)`` -> ``(flow (B, N, T, output_dim), None)``.

        ``across_time(block, tokens (B, N, T, C))``, when given, runs a time block in place of
        the plain call: for frames split over ranks, it gathers each track's frames first."""
        tokens = self.input_transform(self.input_norm(input_tensor))
        init_tokens = tokens
        B, _, T, _ = tokens.shape

        if self.add_space_attn:
            virtual_tokens = self.virual_tracks.repeat(B, 1, T, 1)
            tokens = torch.cat([tokens, virtual_tokens], dim=1)

        _, N, _, _ = tokens.shape
        num_points = N - self.num_virtual_tracks
        j = 0
        for i in range(len(self.time_blocks)):
            if across_time is None:
                time_tokens = tokens.contiguous().view(B * N, T, -1)
                tokens = self.time_blocks[i](time_tokens).view(B, N, T, -1)
            else:
                tokens = across_time(self.time_blocks[i], tokens)

            if self.add_space_attn and (
                i % (len(self.time_blocks) // len(self.space_virtual_blocks)) == 0
            ):
                space_tokens = tokens.permute(0, 2, 1, 3).contiguous().view(B * T, N, -1)
                point_tokens = space_tokens[:, :num_points]
                virtual_tokens = space_tokens[:, num_points:]

                virtual_tokens = self.space_virtual2point_blocks[j](
                    virtual_tokens, point_tokens, mask=mask
                )
                virtual_tokens = self.space_virtual_blocks[j](virtual_tokens)
                point_tokens = self.space_point2virtual_blocks[j](
                    point_tokens, virtual_tokens, mask=mask
                )

                space_tokens = torch.cat([point_tokens, virtual_tokens], dim=1)
                tokens = space_tokens.view(B, T, N, -1).permute(0, 2, 1, 3)
                j += 1

        if self.add_space_attn:
            tokens = tokens[:, :num_points]

        tokens = tokens + init_tokens
        flow = self.flow_head(self.output_norm(tokens))
        return flow, None


# Elements of the correlation volumes (and of the feature maps' pyramid) computed at once
# (1 GiB in fp32).
CORR_ELEMENTS = 1 << 28


class CorrBlock:
    """Multi-level correlation pyramid between track features and frame feature maps.

    The pyramid is built a chunk of frames at a time, whenever it is sampled, from feature
    maps that may lie elsewhere (host memory) than the computation (`device`): each chunk is
    copied over, made ready by `prepare` (e.g. the tracker's feature norm) and pooled, so
    neither the maps nor their pyramid need to fit on the device for all frames at once.
    """

    def __init__(
        self,
        fmaps: torch.Tensor,
        num_levels: int = 4,
        radius: int = 4,
        multiple_track_feats: bool = False,
        padding_mode: str = "zeros",
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | None = None,
    ) -> None:
        """Sample ``fmaps (B, S, C, H, W)`` at `num_levels` levels of 2x2 average pooling."""
        if multiple_track_feats:
            raise NotImplementedError("multiple_track_feats=True is not supported")
        _, S, C, H, W = fmaps.shape
        self.S, self.C, self.H, self.W = S, C, H, W
        self.fmaps = fmaps
        self.prepare = prepare
        self.device = fmaps.device if device is None else device
        self.padding_mode = padding_mode
        self.num_levels = num_levels
        self.radius = radius
        self.multiple_track_feats = multiple_track_feats
        r = radius
        lin = torch.linspace(-r, r, 2 * r + 1, device=self.device, dtype=fmaps.dtype)
        self.delta = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), dim=-1)

    def pyramid(self, frames: slice) -> list[torch.Tensor]:
        """The levels [B, s, C, H_l, W_l] of `frames`, on the computing device."""
        fmaps = self.fmaps[:, frames].to(self.device)
        if self.prepare is not None:
            fmaps = self.prepare(fmaps)
        B, S, C, H, W = fmaps.shape
        levels = [fmaps]
        for _ in range(self.num_levels - 1):
            pooled = F.avg_pool2d(fmaps.reshape(B * S, C, H, W), 2, stride=2)
            _, _, H, W = pooled.shape
            fmaps = pooled.reshape(B, S, C, H, W)
            levels.append(fmaps)
        return levels

    def corr_sample(self, targets: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Correlate ``targets (B, S, N, C)`` with every level around ``coords (B, S, N, 2)``.

        Returns ``(B, S, N, num_levels * (2r+1)^2)``, level-major, x-offset-major windows. Each
        frame is sampled on its own, so the frames go in chunks whose correlation volumes
        ([B, frames, N, H*W]) and feature maps hold at most CORR_ELEMENTS: memory does not
        grow with frames.
        """
        B, S, N, _ = targets.shape
        step = max(1, CORR_ELEMENTS // (B * max(N, self.C) * self.H * self.W))
        if step >= S:
            return self._sample(targets, coords, slice(0, S))
        parts = [
            self._sample(targets[:, a : a + step], coords[:, a : a + step], slice(a, a + step))
            for a in range(0, S, step)
        ]
        return torch.cat(parts, dim=1)

    def _sample(self, targets: torch.Tensor, coords: torch.Tensor, frames: slice) -> torch.Tensor:
        """`corr_sample` of the pyramid's `frames`, whose targets and coords are given."""
        B, S, N, _ = targets.shape
        r = self.radius
        width = 2 * r + 1
        out_pyramid = []
        for level, fmaps in enumerate(self.pyramid(frames)):
            _, _, C, H, W = fmaps.shape
            fmap2s = fmaps.reshape(B, S, C, H * W)
            corrs = torch.matmul(targets, fmap2s)
            del fmap2s
            corrs = corrs.view(B, S, N, -1)
            corrs = corrs / math.sqrt(C)
            corrs = corrs.view(B, S, N, H, W)

            centroid = coords.reshape(B * S * N, 1, 1, 2) / (2**level)
            delta = self.delta.to(coords.device).to(coords.dtype)
            coords_lvl = centroid + delta.view(1, width, width, 2)
            sampled = bilinear_sampler(
                corrs.reshape(B * S * N, 1, H, W), coords_lvl, padding_mode=self.padding_mode
            )
            out_pyramid.append(sampled.view(B, S, N, -1))
        return torch.cat(out_pyramid, dim=-1)

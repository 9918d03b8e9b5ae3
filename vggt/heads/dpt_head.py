"""DPT head: fuses four aggregator layers into a dense per-pixel prediction or feature map."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vggt.heads.head_act import activate_head
from vggt.heads.utils import create_uv_grid, position_grid_to_embed
from vggt.training.checkpointing import run_checkpointed

# 1.5 * 2**30 output elements: larger interpolations go batch chunk by batch chunk, as the
# reference does, because upsampling kernels overflow 32-bit indexing beyond about 2**31.
_INTERPOLATE_LIMIT = 1_610_612_736
# Frames each dense prediction pass covers, as in the reference; bounds the heads' memory.
FRAMES_CHUNK_SIZE = 8


def custom_interpolate(
    x: torch.Tensor,
    size: tuple[int, int] | None = None,
    scale_factor: float | None = None,
    mode: str = "bilinear",
    align_corners: bool = True,
) -> torch.Tensor:
    """F.interpolate to an explicit size, split over the batch when the output is huge."""
    if size is None:
        size = (int(x.shape[-2] * scale_factor), int(x.shape[-1] * scale_factor))
    elements = size[0] * size[1] * x.shape[0] * x.shape[1]
    if elements <= _INTERPOLATE_LIMIT:
        return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)
    chunks = torch.chunk(x, elements // _INTERPOLATE_LIMIT + 1, dim=0)
    resized = [F.interpolate(c, size=size, mode=mode, align_corners=align_corners) for c in chunks]
    return torch.cat(resized, dim=0).contiguous()


class ResidualConvUnit(nn.Module):
    """relu -> conv -> relu -> conv, added to relu(x) (the reference's ReLU runs in place)."""

    def __init__(self, features: int, activation: nn.Module, bn: bool = False, groups: int = 1):
        super().__init__()
        if bn:
            raise ValueError("batch norm in ResidualConvUnit is not supported")
        self.groups = groups
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True, groups=groups)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True, groups=groups)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(x)
        return self.conv2(self.activation(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """Adds a skip feature map, refines, upsamples to the next level's size, projects."""

    def __init__(
        self,
        features: int,
        activation: nn.Module,
        bn: bool = False,
        expand: bool = False,
        align_corners: bool = True,
        size: tuple[int, int] | None = None,
        has_residual: bool = True,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.groups = groups
        self.expand = expand
        self.has_residual = has_residual
        self.size = size
        out_features = features // 2 if expand else features
        self.out_conv = nn.Conv2d(features, out_features, 1, bias=True, groups=groups)
        # resConfUnit1/2 (sic) are the published checkpoint's parameter names.
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features, activation, bn, groups)
        self.resConfUnit2 = ResidualConvUnit(features, activation, bn, groups)

    def forward(self, *xs: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        out = xs[0]
        if self.has_residual:
            out = out + self.resConfUnit1(xs[1])
        out = self.resConfUnit2(out)
        size = size if size is not None else self.size
        if size is None:
            out = custom_interpolate(out, scale_factor=2, align_corners=self.align_corners)
        else:
            out = custom_interpolate(out, size=size, align_corners=self.align_corners)
        return self.out_conv(out)


def _fusion_block(features: int, has_residual: bool = True) -> FeatureFusionBlock:
    return FeatureFusionBlock(features, nn.ReLU(), has_residual=has_residual)


class DPTHead(nn.Module):
    """Dense prediction from aggregator layers `intermediate_layer_idx` (absolute indices)."""

    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        output_dim: int = 4,
        activation: str = "inv_log",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23),
        pos_embed: bool = True,
        feature_only: bool = False,
        down_ratio: int = 1,
    ) -> None:
        super().__init__()
        if len(out_channels) != 4 or len(intermediate_layer_idx) != 4:
            raise ValueError("DPTHead fuses exactly four levels: give four out_channels and layers")
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        # What a training forward keeps of each frame chunk for backward
        # (vggt.training.checkpointing); the reference keeps everything.
        self.checkpointing = "none"
        self.down_ratio = down_ratio
        self.intermediate_layer_idx = list(intermediate_layer_idx)

        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, oc, kernel_size=1) for oc in out_channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for level, channels in enumerate(out_channels, start=1):
            conv = nn.Conv2d(channels, features, kernel_size=3, padding=1, bias=False)
            setattr(self.scratch, f"layer{level}_rn", conv)
        self.scratch.stem_transpose = None
        self.scratch.refinenet1 = _fusion_block(features)
        self.scratch.refinenet2 = _fusion_block(features)
        self.scratch.refinenet3 = _fusion_block(features)
        self.scratch.refinenet4 = _fusion_block(features, has_residual=False)
        if feature_only:
            self.scratch.output_conv1 = nn.Conv2d(features, features, 3, padding=1)
        else:
            self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, output_dim, 1),
            )

    def forward(
        self,
        aggregated_tokens_list: Sequence[torch.Tensor],
        images: torch.Tensor,
        patch_start_idx: int,
        frames_chunk_size: int | None = FRAMES_CHUNK_SIZE,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Features [B, S, C, H', W'] if feature_only, else (preds [B, S, H, W, D], conf)."""
        frames = images.shape[1]
        if frames_chunk_size is not None and frames_chunk_size < 1:
            raise ValueError(f"frames_chunk_size must be positive, got {frames_chunk_size}")
        if frames_chunk_size is None or frames_chunk_size >= frames:
            return self._run_chunk(aggregated_tokens_list, images, patch_start_idx)
        bounds = [
            (start, min(start + frames_chunk_size, frames))
            for start in range(0, frames, frames_chunk_size)
        ]
        if self.feature_only:
            # The tracker's rounding depends on the feature maps' memory layout, which
            # torch.cat fixes as the reference does; predictions are written in place instead.
            chunks = [
                self._run_chunk(aggregated_tokens_list, images, patch_start_idx, start, end)
                for start, end in bounds
            ]
            return torch.cat(chunks, dim=1)
        preds = conf = None
        for start, end in bounds:
            chunk_preds, chunk_conf = self._run_chunk(
                aggregated_tokens_list, images, patch_start_idx, start, end
            )
            if preds is None:
                leading = images.shape[:2]
                preds = chunk_preds.new_empty(leading + chunk_preds.shape[2:])
                conf = chunk_conf.new_empty(leading + chunk_conf.shape[2:])
            preds[:, start:end] = chunk_preds
            conf[:, start:end] = chunk_conf
            del chunk_preds, chunk_conf
        return preds, conf

    def _run_chunk(
        self,
        aggregated_tokens_list: Sequence[torch.Tensor],
        images: torch.Tensor,
        patch_start_idx: int,
        frames_start: int | None = None,
        frames_end: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One frame chunk, checkpointed as `checkpointing` says: under a policy other than
        "none", only one chunk's full-resolution activations are alive at a time in backward."""
        return run_checkpointed(
            self.checkpointing,
            self._forward_impl,
            aggregated_tokens_list,
            images,
            patch_start_idx,
            frames_start,
            frames_end,
        )

    def _forward_impl(
        self,
        aggregated_tokens_list: Sequence[torch.Tensor],
        images: torch.Tensor,
        patch_start_idx: int,
        frames_start: int | None = None,
        frames_end: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if frames_start is not None:
            images = images[:, frames_start:frames_end]
        batch, frames, _, height, width = images.shape
        patch_h, patch_w = height // self.patch_size, width // self.patch_size
        levels = []
        for level, layer in enumerate(self.intermediate_layer_idx):
            x = aggregated_tokens_list[layer][:, :, patch_start_idx:]
            if frames_start is not None:
                x = x[:, frames_start:frames_end]
            x = self.norm(x.reshape(batch * frames, -1, x.shape[-1]))
            x = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], patch_h, patch_w)
            x = self.projects[level](x)
            if self.pos_embed:
                x = self._apply_pos_embed(x, width, height)
            levels.append(self.resize_layers[level](x))
        out = self.scratch_forward(levels)
        size = (
            int(patch_h * self.patch_size / self.down_ratio),
            int(patch_w * self.patch_size / self.down_ratio),
        )
        out = custom_interpolate(out, size=size, mode="bilinear", align_corners=True)
        if self.pos_embed:
            out = self._apply_pos_embed(out, width, height)
        if self.feature_only:
            return out.view(batch, frames, *out.shape[1:])
        out = self.scratch.output_conv2(out)
        preds, conf = activate_head(out, self.activation, self.conf_activation)
        return preds.view(batch, frames, *preds.shape[1:]), conf.view(
            batch, frames, *conf.shape[1:]
        )

    def _apply_pos_embed(
        self, x: torch.Tensor, width: int, height: int, ratio: float = 0.1
    ) -> torch.Tensor:
        """Add a sin-cos embedding of normalised pixel coordinates (image aspect ratio)."""
        grid_h, grid_w = x.shape[-2:]
        grid = create_uv_grid(
            grid_w, grid_h, aspect_ratio=width / height, dtype=x.dtype, device=x.device
        )
        embed = position_grid_to_embed(grid, x.shape[1]) * ratio
        return x + embed.permute(2, 0, 1)[None].expand(x.shape[0], -1, -1, -1)

    def scratch_forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Project the four levels to `features` channels and fuse them coarse to fine."""
        scratch = self.scratch
        l1 = scratch.layer1_rn(levels[0])
        l2 = scratch.layer2_rn(levels[1])
        l3 = scratch.layer3_rn(levels[2])
        l4 = scratch.layer4_rn(levels[3])
        levels.clear()
        out = scratch.refinenet4(l4, size=l3.shape[2:])
        del l4
        out = scratch.refinenet3(out, l3, size=l2.shape[2:])
        del l3
        out = scratch.refinenet2(out, l2, size=l1.shape[2:])
        del l2
        out = scratch.refinenet1(out, l1)
        del l1
        return scratch.output_conv1(out)

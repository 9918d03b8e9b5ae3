"""The VGGT model: aggregator plus camera, depth, point and track heads."""

import contextlib
import os
from collections.abc import Sequence

import torch
from torch import nn

from vggt.heads.camera_head import CameraHead
from vggt.heads.dpt_head import DPTHead
from vggt.heads.track_head import TrackHead, check_query_points
from vggt.models.aggregator import Aggregator
from vggt.models.hub import HubMixin, read_state_dict

# Device types with an autocast to turn off around the heads (meta tensors have none).
AUTOCAST_DEVICES = ("cuda", "cpu", "mps", "xpu")


def batch_inputs(
    images: torch.Tensor, query_points: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Add the batch dim to [S, 3, H, W] images and [N, 2] query points; validate both."""
    if not isinstance(images, torch.Tensor) or images.ndim not in (4, 5):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be [S, 3, H, W] or [B, S, 3, H, W], got {shape}")
    if images.ndim == 4:
        images = images.unsqueeze(0)
    if query_points is None:
        return images, None
    if query_points.ndim == 2:
        query_points = query_points.unsqueeze(0)
    check_query_points(query_points, images.shape[0])
    return images, query_points


class VGGT(nn.Module, HubMixin):
    """Visual Geometry Grounded Transformer: cameras, depth, point maps and tracks from frames.

    The first seven arguments are the reference constructor; `depth`, `num_heads`,
    `patch_embed` and `intermediate_layer_idx` size smaller models for tests and profiling.
    `save_pretrained` and `from_pretrained` write and read config.json plus model.safetensors.
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        enable_camera: bool = True,
        enable_point: bool = True,
        enable_depth: bool = True,
        enable_track: bool = True,
        depth: int = 24,
        num_heads: int = 16,
        patch_embed: str = "dinov2_vitl14_reg",
        intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23),
    ) -> None:
        super().__init__()
        self.aggregator = self.build_aggregator(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            patch_embed=patch_embed,
        )
        out_of_range = [i for i in intermediate_layer_idx if not -depth <= i < depth]
        if out_of_range:
            raise ValueError(
                f"intermediate_layer_idx {out_of_range} out of range for depth {depth}"
            )
        dim = 2 * embed_dim
        layers = list(intermediate_layer_idx)
        self.camera_head = CameraHead(dim_in=dim) if enable_camera else None
        self.point_head = (
            DPTHead(
                dim_in=dim,
                output_dim=4,
                activation="inv_log",
                conf_activation="expp1",
                intermediate_layer_idx=layers,
            )
            if enable_point
            else None
        )
        self.depth_head = (
            DPTHead(
                dim_in=dim,
                output_dim=2,
                activation="exp",
                conf_activation="expp1",
                intermediate_layer_idx=layers,
            )
            if enable_depth
            else None
        )
        self.track_head = (
            TrackHead(dim_in=dim, patch_size=patch_size, intermediate_layer_idx=layers)
            if enable_track
            else None
        )

    def build_aggregator(self, **kwargs) -> nn.Module:
        """The backbone; subclasses swap in another aggregator with the same state dict."""
        return Aggregator(**kwargs)

    def checkpoint_activations(self, policy: str) -> None:
        """What a training forward keeps for backward: the aggregator's blocks checkpointed as
        `policy` says ("none", "blocks", the reference's, or "selective")."""
        self.aggregator.checkpoint_activations(policy)

    def load_checkpoint(self, path: str | os.PathLike, strict: bool = True) -> None:
        """Load a published-layout state dict from `model.pt` (weights only) or `.safetensors`."""
        self.load_state_dict(read_state_dict(path), strict=strict)

    def aggregate(self, images: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        """Run the aggregator; returns the layer outputs the heads index and patch_start_idx."""
        return self.aggregator(images)

    def dense_heads(self) -> list[tuple[str, DPTHead]]:
        """The enabled per-pixel heads, each with the prediction it fills ("depth", ...)."""
        heads = (("depth", self.depth_head), ("world_points", self.point_head))
        return [(name, head) for name, head in heads if head is not None]

    def forward(
        self, images: torch.Tensor, query_points: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """images [S, 3, H, W] or [B, S, 3, H, W] in [0, 1]; query points [N, 2] or [B, N, 2]."""
        images, query_points = batch_inputs(images, query_points)
        tokens, patch_start_idx = self.aggregate(images)
        predictions = self.predict(tokens, images, patch_start_idx, query_points)
        if not self.training:
            predictions["images"] = images
        return predictions

    def predict(
        self,
        tokens: Sequence[torch.Tensor],
        images: torch.Tensor,
        patch_start_idx: int,
        query_points: torch.Tensor | None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Run the enabled heads on the aggregator's layer outputs."""
        predictions: dict[str, torch.Tensor | list[torch.Tensor]] = {}
        dtype = self.heads_dtype()
        layers = tokens if dtype is None else LayersAs(tokens, dtype)
        with heads_in_fp32(images):
            if self.camera_head is not None:
                predictions.update(pose_predictions(self.camera_head(layers)))
            for name, head in self.dense_heads():
                values = head(layers, images=images, patch_start_idx=patch_start_idx)
                predictions[name], predictions[f"{name}_conf"] = values
        if self.track_head is not None and query_points is not None:
            tracks = self.track_head(
                tokens, images=images, patch_start_idx=patch_start_idx, query_points=query_points
            )
            predictions.update(track_predictions(tracks))
        return predictions

    def heads_dtype(self) -> torch.dtype | None:
        """The dtype of the enabled heads' weights (None without heads)."""
        heads = (self.camera_head, self.depth_head, self.point_head, self.track_head)
        for head in heads:
            if head is not None:
                return next(head.parameters()).dtype
        return None


class LayersAs(Sequence):
    """The aggregator's layers as a head reads them: each one, when read, in `dtype` (the
    heads' own, when the aggregator's weights were cast to another)."""

    def __init__(self, layers: Sequence[torch.Tensor], dtype: torch.dtype) -> None:
        self.layers = layers
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.layers[index].to(self.dtype)


def heads_in_fp32(images: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on the images' device, as the reference runs its camera and dense heads in
    fp32 (it turns CUDA autocast off; here the CPU's too, so a CPU run computes them as a GPU
    run does)."""
    if images.device.type not in AUTOCAST_DEVICES:
        return contextlib.nullcontext()
    return torch.autocast(images.device.type, enabled=False)


def pose_predictions(pose_enc_list: list[torch.Tensor]) -> dict[str, torch.Tensor | list]:
    """The camera head's iterations as predictions: the last one and all of them."""
    return {"pose_enc": pose_enc_list[-1], "pose_enc_list": pose_enc_list}


def track_predictions(tracks: tuple) -> dict[str, torch.Tensor]:
    """The track head's (per-iteration tracks, visibility, confidence) as predictions."""
    track_list, vis, conf = tracks
    return {"track": track_list[-1], "vis": vis, "conf": conf}

"""Point-tracking head: DPT feature extractor followed by the iterative tracker."""

from collections.abc import Sequence

import torch
from torch import nn

from vggt.heads.dpt_head import DPTHead
from vggt.heads.track_modules.base_track_predictor import BaseTrackerPredictor, FrameShare


def check_query_points(query_points: torch.Tensor | None, batch: int) -> None:
    """ValueError unless `query_points` is a [batch, N, 2] tensor of pixel coordinates."""
    if query_points is None:
        raise ValueError("query_points is required: a [B, N, 2] tensor of pixel coordinates")
    if query_points.ndim != 3 or query_points.shape[-1] != 2:
        raise ValueError(
            f"query_points must be [N, 2] or [B, N, 2], got {tuple(query_points.shape)}"
        )
    if query_points.shape[0] != batch:
        raise ValueError(f"query_points batch {query_points.shape[0]} != images batch {batch}")


class TrackHead(nn.Module):
    """Track query points through a sequence from aggregated tokens."""

    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        features: int = 128,
        iters: int = 4,
        predict_conf: bool = True,
        stride: int = 2,
        corr_levels: int = 7,
        corr_radius: int = 4,
        hidden_size: int = 384,
        intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23),
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.feature_extractor = DPTHead(
            dim_in,
            patch_size=patch_size,
            features=features,
            feature_only=True,
            down_ratio=2,
            pos_embed=False,
            intermediate_layer_idx=intermediate_layer_idx,
        )
        self.tracker = BaseTrackerPredictor(
            latent_dim=features,
            predict_conf=predict_conf,
            stride=stride,
            corr_levels=corr_levels,
            corr_radius=corr_radius,
            hidden_size=hidden_size,
        )
        self.iters = iters

    def forward(
        self,
        aggregated_tokens_list: list[torch.Tensor],
        images: torch.Tensor,
        patch_start_idx: int,
        query_points: torch.Tensor | None = None,
        iters: int | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Return ``(coord_preds, vis, conf)`` for ``query_points (B, N, 2)`` in image pixels.

        ``coord_preds`` is a list of ``(B, S, N, 2)`` tracks, one per iteration; ``vis``/``conf``
        are ``(B, S, N)``.
        """
        if images.dim() != 5:
            raise ValueError(f"images must be [B, S, 3, H, W], got shape {tuple(images.shape)}")
        check_query_points(query_points, images.shape[0])
        feature_maps = self.feature_extractor(aggregated_tokens_list, images, patch_start_idx)
        return self.track(feature_maps, query_points, iters)

    def track(
        self,
        feature_maps: torch.Tensor,
        query_points: torch.Tensor,
        iters: int | None = None,
        frames: FrameShare | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """The tracker on feature maps [B, S, C, H', W'] that `feature_extractor` made (with
        `frames`, this rank's S frames of a sequence split over ranks)."""
        return self.tracker(
            query_points=query_points,
            fmaps=feature_maps,
            iters=self.iters if iters is None else iters,
            frames=frames,
        )

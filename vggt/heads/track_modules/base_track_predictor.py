"""Iterative CoTracker-style point tracker operating on per-frame feature maps."""

from collections.abc import Callable
from functools import partial
from typing import Protocol

import torch
from torch import nn

from vggt.heads.track_modules.blocks import CorrBlock, EfficientUpdateFormer
from vggt.heads.track_modules.utils import (
    get_2d_embedding,
    get_2d_sincos_pos_embed,
    sample_features4d,
)
from vggt.layers.mlp import Mlp
from vggt.training.checkpointing import run_checkpointed


class FrameShare(Protocol):
    """This rank's consecutive frames of a sequence split over ranks, as the tracker needs it:
    whether they start with the sequence's first frame, the query features sampled there
    (`from_first_frame` overwrites `value` with that rank's), and a time block run over every
    frame of the tracks (`across_time`)."""

    holds_first_frame: bool

    def from_first_frame(self, value: torch.Tensor) -> None: ...

    def across_time(self, block: nn.Module, tokens: torch.Tensor) -> torch.Tensor: ...


class BaseTrackerPredictor(nn.Module):
    """Refine tracks of query points over ``iters`` correlation / transformer updates."""

    def __init__(
        self,
        stride: int = 1,
        corr_levels: int = 5,
        corr_radius: int = 4,
        latent_dim: int = 128,
        hidden_size: int = 384,
        use_spaceatt: bool = True,
        depth: int = 6,
        max_scale: int = 518,
        predict_conf: bool = True,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.latent_dim = latent_dim
        self.corr_levels = corr_levels
        self.corr_radius = corr_radius
        self.hidden_size = hidden_size
        self.max_scale = max_scale
        self.predict_conf = predict_conf

        self.flows_emb_dim = latent_dim // 2
        self.transformer_dim = 3 * latent_dim + 4

        self.query_ref_token = nn.Parameter(torch.randn(1, 2, self.transformer_dim))

        corr_in_dim = corr_levels * (2 * corr_radius + 1) ** 2
        self.corr_mlp = Mlp(
            in_features=corr_in_dim, hidden_features=hidden_size, out_features=latent_dim
        )
        self.updateformer = EfficientUpdateFormer(
            space_depth=depth,
            time_depth=depth,
            input_dim=self.transformer_dim,
            hidden_size=hidden_size,
            output_dim=latent_dim + 2,
            mlp_ratio=4.0,
            add_space_attn=use_spaceatt,
        )
        self.fmap_norm = nn.LayerNorm(latent_dim)
        self.ffeat_norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        if predict_conf:
            self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        # What a training forward keeps of each refinement for backward
        # (vggt.training.checkpointing); the reference keeps everything.
        self.checkpointing = "none"

    def normed_maps(self, fmaps: torch.Tensor) -> torch.Tensor:
        """Feature maps [B, s, C, H, W] with each pixel's features layer-normed (a frame at a
        time or all at once: the same values)."""
        return self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)

    def forward(
        self,
        query_points: torch.Tensor,
        fmaps: torch.Tensor,
        iters: int = 6,
        return_feat: bool = False,
        down_ratio: int = 1,
        apply_sigmoid: bool = True,
        frames: "FrameShare | None" = None,
    ) -> tuple:
        """Track ``query_points (B, N, 2)`` (image pixels, x/y) through ``fmaps (B, S, C, HH, WW)``
        (on the points' device, or elsewhere, e.g. in host memory: read a chunk at a time).

        Returns ``(coord_preds, vis, conf)``: a list of ``iters`` ``(B, S, N, 2)`` tensors in image
        pixels, and ``(B, S, N)`` scores (``conf`` is None without ``predict_conf``). With
        ``return_feat`` returns ``(coord_preds, vis, track_feats, query_track_feat, conf)``.
        With ``frames`` the S frames are this rank's share of a longer sequence (see
        `FrameShare`), and so are the results.
        """
        B, N, D = query_points.shape
        B, S, _, HH, WW = fmaps.shape
        if D != 2:
            raise ValueError(f"query_points must have 2 coordinates, got {D}")

        device = query_points.device
        if down_ratio > 1:
            query_points = query_points / float(down_ratio)
        query_points = query_points / float(self.stride)

        coords = query_points.clone().reshape(B, 1, N, 2).repeat(1, S, 1, 1)

        first = frames is None or frames.holds_first_frame
        # Sampled on every rank, so each has the dtype autocast gives it; rank 0's is the one.
        first_map = self.normed_maps(fmaps[:, :1].to(device))[:, 0]
        query_track_feat = sample_features4d(first_map, coords[:, 0])
        del first_map
        if frames is not None:
            frames.from_first_frame(query_track_feat)
        track_feats = query_track_feat.unsqueeze(1).repeat(1, S, 1, 1)
        coords_backup = coords.clone()

        fcorr_fn = CorrBlock(
            fmaps,
            num_levels=self.corr_levels,
            radius=self.corr_radius,
            prepare=self.normed_maps,
            device=device,
        )

        pos_embed = get_2d_sincos_pos_embed(self.transformer_dim, grid_size=(HH, WW))
        pos_embed = pos_embed.to(query_points.device)
        sampled_pos_emb = sample_features4d(pos_embed.expand(B, -1, -1, -1), coords_backup[:, 0])
        sampled_pos_emb = sampled_pos_emb.reshape(B * N, self.transformer_dim).unsqueeze(1)
        del pos_embed  # a map of the feature maps' size: only the query points' samples are read
        across_time = None if frames is None else frames.across_time
        refine = partial(
            self.refine,
            fcorr_fn=fcorr_fn,
            coords_backup=coords_backup,
            sampled_pos_emb=sampled_pos_emb,
            first=first,
            across_time=across_time,
        )

        coord_preds = []
        for _ in range(iters):
            coords, track_feats = run_checkpointed(
                self.checkpointing, refine, coords.detach(), track_feats
            )
            if down_ratio > 1:
                coord_preds.append(coords * self.stride * down_ratio)
            else:
                coord_preds.append(coords * self.stride)

        vis_e = self.vis_predictor(track_feats.reshape(B * S * N, self.latent_dim))
        vis_e = vis_e.reshape(B, S, N)
        if apply_sigmoid:
            vis_e = torch.sigmoid(vis_e)

        conf_e = None
        if self.predict_conf:
            conf_e = self.conf_predictor(track_feats.reshape(B * S * N, self.latent_dim))
            conf_e = conf_e.reshape(B, S, N)
            if apply_sigmoid:
                conf_e = torch.sigmoid(conf_e)

        if return_feat:
            return coord_preds, vis_e, track_feats, query_track_feat, conf_e
        return coord_preds, vis_e, conf_e

    def refine(
        self,
        coords: torch.Tensor,
        track_feats: torch.Tensor,
        fcorr_fn: CorrBlock,
        coords_backup: torch.Tensor,
        sampled_pos_emb: torch.Tensor,
        first: bool,
        across_time: Callable | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of ``coords (B, S, N, 2)`` and ``track_feats (B, S, N, C)`` from their
        correlations with the feature maps (a unit `checkpointing` can recompute in backward)."""
        B, S, N, _ = coords.shape
        fcorrs = fcorr_fn.corr_sample(track_feats, coords)
        corr_dim = fcorrs.shape[3]
        fcorrs_ = fcorrs.permute(0, 2, 1, 3).reshape(B * N, S, corr_dim)
        fcorrs_ = self.corr_mlp(fcorrs_)

        # The first frame's coordinates stay the query points (reset after each update).
        flows = (coords - coords_backup[:, 0:1]).permute(0, 2, 1, 3).reshape(B * N, S, 2)
        flows_emb = get_2d_embedding(flows, self.flows_emb_dim, cat_coords=False)
        flows_emb = torch.cat([flows_emb, flows / self.max_scale, flows / self.max_scale], dim=-1)

        track_feats_ = track_feats.permute(0, 2, 1, 3).reshape(B * N, S, self.latent_dim)
        transformer_input = torch.cat([flows_emb, fcorrs_, track_feats_], dim=2)
        x = transformer_input + sampled_pos_emb

        if first:
            query_ref_token = torch.cat(
                [
                    self.query_ref_token[:, 0:1],
                    self.query_ref_token[:, 1:2].expand(-1, S - 1, -1),
                ],
                dim=1,
            )
        else:
            query_ref_token = self.query_ref_token[:, 1:2].expand(-1, S, -1)
        x = x + query_ref_token.to(x.device).to(x.dtype)

        x = x.reshape(B, N, S, self.transformer_dim)
        delta, _ = self.updateformer(x, across_time=across_time)
        delta = delta.reshape(B * N, S, self.latent_dim + 2)
        delta_coords_ = delta[:, :, :2]
        delta_feats_ = delta[:, :, 2:]

        track_feats_ = track_feats_.reshape(B * N * S, self.latent_dim)
        delta_feats_ = delta_feats_.reshape(B * N * S, self.latent_dim)
        track_feats_ = self.ffeat_updater(self.ffeat_norm(delta_feats_)) + track_feats_
        track_feats = track_feats_.reshape(B, N, S, self.latent_dim).permute(0, 2, 1, 3)

        coords = coords + delta_coords_.reshape(B, N, S, 2).permute(0, 2, 1, 3)
        if first:
            coords[:, 0] = coords_backup[:, 0]
        return coords, track_feats

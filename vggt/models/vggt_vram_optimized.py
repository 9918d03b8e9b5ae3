"""VGGT whose aggregator keeps only the layers its enabled heads read."""

from collections.abc import Iterable

import torch
from torch import nn

from vggt.heads.dpt_head import FRAMES_CHUNK_SIZE
from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized, LayerSelectView
from vggt.models.vggt import VGGT, heads_in_fp32, pose_predictions, track_predictions
from vggt.streaming.offload import OffloadedLayer, iter_frame_chunks


class VGGTOptimized(VGGT):
    """`VGGT` with the same state dict and predictions, and far smaller aggregator outputs.

    `selected_layer_idx=None` keeps the union of the layers the enabled heads read
    ([4, 11, 17, 23] for the default model); an explicit selection must cover them.
    `offload_outputs` keeps those layers in (page-locked) host memory during inference; the
    heads then read them frame chunk by frame chunk, each chunk copied back once.
    """

    def __init__(
        self,
        *args,
        selected_layer_idx: Iterable[int] | None = None,
        offload_outputs: bool = False,
        **kwargs,
    ) -> None:
        """`VGGT`'s arguments, plus the layers to keep and whether to offload them."""
        super().__init__(*args, **kwargs)
        needed = self.layers_read_by_heads()
        if selected_layer_idx is None:
            selected_layer_idx = sorted(needed) or None
        self.aggregator.keep_layers(selected_layer_idx)
        self.aggregator.offload_device = torch.device("cpu") if offload_outputs else None
        kept = set(self.aggregator.kept_indices)
        for layer, heads in sorted(needed.items()):
            if layer not in kept:
                raise ValueError(
                    f"selected_layer_idx {sorted(kept)} misses layer {layer}, "
                    f"which {' and '.join(heads)} read{'s' if len(heads) == 1 else ''}"
                )

    def build_aggregator(self, **kwargs) -> nn.Module:
        return AggregatorVramOptimized(**kwargs)

    def layers_read_by_heads(self) -> dict[int, list[str]]:
        """Absolute layer index -> names of the enabled heads that read it."""
        depth = self.aggregator.depth
        readers = {"camera_head": [depth - 1]}
        for name in ("point_head", "depth_head"):
            head = getattr(self, name)
            if head is not None:
                readers[name] = head.intermediate_layer_idx
        if self.track_head is not None:
            readers["track_head"] = self.track_head.feature_extractor.intermediate_layer_idx
        needed: dict[int, list[str]] = {}
        for name, layers in readers.items():
            if getattr(self, name) is None:
                continue
            for layer in layers:
                needed.setdefault(layer % depth, []).append(name)
        return needed

    def aggregate(self, images: torch.Tensor) -> tuple[LayerSelectView, int]:
        view, patch_start_idx, _ = self.aggregator(images)
        return view, patch_start_idx

    def predict(
        self,
        tokens: LayerSelectView,
        images: torch.Tensor,
        patch_start_idx: int,
        query_points: torch.Tensor | None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The heads; on offloaded layers they run frame chunk by frame chunk."""
        if not any(isinstance(layer, OffloadedLayer) for _, layer in tokens.items()):
            return super().predict(tokens, images, patch_start_idx, query_points)
        return self._predict_by_frame_chunk(tokens, images, patch_start_idx, query_points)

    def _predict_by_frame_chunk(
        self,
        view: LayerSelectView,
        images: torch.Tensor,
        patch_start_idx: int,
        query_points: torch.Tensor | None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Each frame chunk of the kept layers is copied back once and every head reads its
        share: dense predictions and track features per chunk, camera tokens gathered for
        the camera head, which attends across all frames."""
        depth, frames = view.depth, images.shape[1]
        track = self.track_head is not None and query_points is not None
        predictions: dict[str, torch.Tensor | list[torch.Tensor]] = {}
        cameras, features = [], []
        for start, end, chunk in iter_frame_chunks(dict(view.items()), frames, FRAMES_CHUNK_SIZE):
            layers = LayerSelectView(chunk, depth)
            part = images[:, start:end]
            with heads_in_fp32(images):
                for name, head in self.dense_heads():
                    values = head(layers, part, patch_start_idx, frames_chunk_size=None)
                    for key, value in zip((name, f"{name}_conf"), values, strict=True):
                        if key not in predictions:
                            predictions[key] = value.new_empty(
                                (*images.shape[:2], *value.shape[2:])
                            )
                        predictions[key][:, start:end] = value
            if self.camera_head is not None:
                cameras.append(layers[-1][:, :, :1].clone())
            if track:
                extractor = self.track_head.feature_extractor
                features.append(extractor(layers, part, patch_start_idx, frames_chunk_size=None))
            del layers, chunk
        if self.camera_head is not None:
            camera_view = LayerSelectView({depth - 1: torch.cat(cameras, dim=1)}, depth)
            with heads_in_fp32(images):
                predictions.update(pose_predictions(self.camera_head(camera_view)))
        if track:
            maps = features[0] if len(features) == 1 else torch.cat(features, dim=1)
            predictions.update(track_predictions(self.track_head.track(maps, query_points)))
        return predictions

"""VGGT whose aggregator keeps only the layers its enabled heads read."""

from collections.abc import Iterable

import torch
from torch import nn

from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized, LayerSelectView
from vggt.models.vggt import VGGT


class VGGTOptimized(VGGT):
    """`VGGT` with the same state dict and predictions, and far smaller aggregator outputs.

    `selected_layer_idx=None` keeps the union of the layers the enabled heads read
    ([4, 11, 17, 23] for the default model); an explicit selection must cover them.
    `offload_outputs` keeps those layers in pinned host memory during inference; the heads
    then copy back only the frames they are working on.
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

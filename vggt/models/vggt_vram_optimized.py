"""VGGT whose aggregator keeps only the layers its enabled heads read."""

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from vggt.heads.dpt_head import FRAMES_CHUNK_SIZE
from vggt.models.aggregator_vram_optimized import AggregatorVramOptimized, LayerSelectView
from vggt.models.vggt import VGGT, heads_in_fp32, pose_predictions, track_predictions
from vggt.parallel.autograd import gather_frames
from vggt.parallel.group import SequenceGroup
from vggt.parallel.tracking import SplitFrames
from vggt.streaming.offload import OffloadedLayer, iter_frame_chunks


class VGGTOptimized(VGGT):
    """`VGGT` with the same state dict and predictions, and far smaller aggregator outputs.

    `selected_layer_idx=None` keeps the union of the layers the enabled heads read
    ([4, 11, 17, 23] for the default model); an explicit selection must cover them.
    `offload_outputs` keeps those layers in (page-locked) host memory during inference; the
    heads then read them frame chunk by frame chunk, each chunk copied back once. So do they
    when the aggregator's weights are cast to another dtype than the heads' (e.g. bf16
    against fp32): each chunk is converted to the heads' dtype as it is read.

    `progress`, when set, is called with a number of steps done: 1 after each aggregator
    block, and as the heads finish frame chunks, 1 per chunk of FRAMES_CHUNK_SIZE frames; a
    forward on S frames makes `progress_steps(S)` steps in all.

    `predictions_device`, when set (e.g. the CPU), receives the depth and point predictions
    and the track head's feature maps frame chunk by frame chunk as the heads make them, so
    nothing the heads return grows with the frames on the compute device (a few MB per frame,
    copied once: page-locked memory would gain little; the tracker reads its maps back a
    chunk at a time); without autograd only.

    In training (`vggt.training`), a frozen aggregator runs without autograd, streamed as in
    inference, and `checkpoint_activations` checkpoints the dense heads' frame chunks too, so
    backward keeps the kept layers, the block inputs and one chunk of head activations at a
    time.
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
        self.predictions_device: torch.device | None = None
        kept = set(self.aggregator.kept_indices)
        for layer, heads in sorted(needed.items()):
            if layer not in kept:
                raise ValueError(
                    f"selected_layer_idx {sorted(kept)} misses layer {layer}, "
                    f"which {' and '.join(heads)} read{'s' if len(heads) == 1 else ''}"
                )

    def build_aggregator(self, **kwargs) -> nn.Module:
        return AggregatorVramOptimized(**kwargs)

    def checkpoint_activations(self, policy: str) -> None:
        """The aggregator's blocks, the DPT heads' frame chunks (the track head's feature
        extractor's too) and the tracker's refinements checkpointed as `policy` says."""
        super().checkpoint_activations(policy)
        for head in (self.depth_head, self.point_head):
            if head is not None:
                head.checkpointing = policy
        if self.track_head is not None:
            self.track_head.feature_extractor.checkpointing = policy
            self.track_head.tracker.checkpointing = policy

    @property
    def progress(self) -> Callable[[int], None] | None:
        """The progress callback (steps done since the last call), or None."""
        return self.aggregator.after_block

    @progress.setter
    def progress(self, callback: Callable[[int], None] | None) -> None:
        self.aggregator.after_block = callback

    def progress_steps(self, frames: int) -> int:
        """The steps `progress` hears of in a forward on `frames` frames (this rank's)."""
        return 2 * self.aggregator.depth + head_chunks(frames)

    def _report_heads(self, frames: int) -> None:
        """Tell `progress` that the heads finished `frames` frames."""
        if self.progress is not None:
            self.progress(head_chunks(frames))

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
        """The kept layers; a frozen aggregator (no parameter requires grad) runs without
        autograd, streamed as in inference."""
        frozen = not any(p.requires_grad for p in self.aggregator.parameters())
        with torch.no_grad() if frozen else contextlib.nullcontext():
            view, patch_start_idx, _ = self.aggregator(images)
        return view, patch_start_idx

    def _predictions_target(self) -> torch.device | None:
        """Where the dense predictions go: `predictions_device` without autograd, else None
        (where the heads make them)."""
        return None if torch.is_grad_enabled() else self.predictions_device

    def parallelize(self, group: SequenceGroup | None, attention: str = "ulysses") -> None:
        """Split each forward's sequence over `group`'s ranks (None: one device again).

        Every rank passes its own consecutive frames (rank order is frame order) and the same
        query points, and gets the predictions of its own frames, equal to one device's:
        global attention spans the ranks (`attention` "ulysses" or "ring"), the camera head
        sees every frame's camera token, and the tracker tracks through each rank's own
        frames, its attention across time spanning the ranks. Training runs the split too
        (Ulysses attention, tracks on one device only): `vggt.training.step.TrainingStep`
        sums the ranks' gradients.
        """
        self.aggregator.parallelize(group, attention)

    def predict(
        self,
        tokens: LayerSelectView,
        images: torch.Tensor,
        patch_start_idx: int,
        query_points: torch.Tensor | None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The heads; on offloaded layers, layers in another dtype than the heads', frames
        split over ranks, or predictions sent elsewhere, they run frame chunk by frame chunk."""
        layers = [layer for _, layer in tokens.items()]
        offloaded = any(isinstance(layer, OffloadedLayer) for layer in layers)
        dtype = self.heads_dtype()
        converted = dtype is not None and any(layer.dtype != dtype for layer in layers)
        elsewhere = self._predictions_target() is not None
        if not (offloaded or converted or elsewhere or self.aggregator.sequence_group is not None):
            predictions = super().predict(tokens, images, patch_start_idx, query_points)
            self._report_heads(images.shape[1])
            return predictions
        return self._predict_by_frame_chunk(tokens, images, patch_start_idx, query_points)

    def _predict_by_frame_chunk(
        self,
        view: LayerSelectView,
        images: torch.Tensor,
        patch_start_idx: int,
        query_points: torch.Tensor | None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Each frame chunk of the kept layers is read once (copied back, when offloaded) and
        every head reads its share: dense predictions and track features per chunk, camera
        tokens gathered for the camera head, which attends across all frames."""
        depth, frames, dtype = view.depth, images.shape[1], self.heads_dtype()
        track = self.track_head is not None and query_points is not None
        predictions: dict[str, torch.Tensor | list[torch.Tensor]] = {}
        target = self._predictions_target()
        cameras = []
        maps = None
        for start, end, chunk in iter_frame_chunks(dict(view.items()), frames, FRAMES_CHUNK_SIZE):
            if dtype is not None:
                chunk = {index: layer.to(dtype) for index, layer in chunk.items()}
            layers = LayerSelectView(chunk, depth)
            part = images[:, start:end]
            with heads_in_fp32(images):
                for name, head in self.dense_heads():
                    values = head(layers, part, patch_start_idx, frames_chunk_size=None)
                    for key, value in zip((name, f"{name}_conf"), values, strict=True):
                        if key not in predictions:
                            shape = (*images.shape[:2], *value.shape[2:])
                            device = target or value.device
                            predictions[key] = value.new_empty(shape, device=device)
                        predictions[key][:, start:end] = value
            if self.camera_head is not None:
                cameras.append(layers[-1][:, :, :1].clone())
            if track:
                extractor = self.track_head.feature_extractor
                chunk_maps = extractor(layers, part, patch_start_idx, frames_chunk_size=None)
                if maps is None:
                    shape = (*images.shape[:2], *chunk_maps.shape[2:])
                    maps = chunk_maps.new_empty(shape, device=target or chunk_maps.device)
                maps[:, start:end] = chunk_maps
                del chunk_maps
            del layers, chunk
            self._report_heads(end - start)
        if self.camera_head is not None:
            predictions.update(self._cameras(torch.cat(cameras, dim=1), depth, images))
        if track:
            predictions.update(self._tracks(maps, query_points))
        return predictions

    def _cameras(
        self, tokens: torch.Tensor, depth: int, images: torch.Tensor
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Poses of this rank's frames from their camera tokens [B, n, 1, 2C]; split over
        ranks, the camera head runs on every frame's token and each rank keeps its own."""
        group = self.aggregator.sequence_group
        if group is not None:
            layout = self.aggregator.block_runner.layout
            tokens = gather_frames(tokens, group, layout)
        with heads_in_fp32(images):
            poses = self.camera_head(LayerSelectView({depth - 1: tokens}, depth))
        if group is not None:
            first = layout.start()
            poses = [pose[:, first : first + layout.local] for pose in poses]
        return pose_predictions(poses)

    def _tracks(
        self, feature_maps: torch.Tensor, query_points: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Tracks of this rank's frames; split over ranks, each rank tracks through its own
        frames' feature maps and the tracker's time attention spans the ranks
        (`vggt.parallel.tracking`)."""
        group = self.aggregator.sequence_group
        frames = None
        if group is not None:
            if torch.is_grad_enabled():
                raise RuntimeError(
                    "tracks of a sequence split over ranks run without autograd only: train "
                    "the track head on one device"
                )
            frames = SplitFrames(group, self.aggregator.block_runner.layout)
        tracks = self.track_head.track(feature_maps, query_points, frames=frames)
        return track_predictions(tracks)


def head_chunks(frames: int) -> int:
    """Chunks of FRAMES_CHUNK_SIZE frames the heads read `frames` frames in."""
    return -(-frames // FRAMES_CHUNK_SIZE)

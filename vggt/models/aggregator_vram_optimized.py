"""An aggregator that keeps only the layer outputs its heads read.

The reference aggregator returns all `depth` layer outputs, each [B, S, P, 2C]; the heads read
four of them. `AggregatorVramOptimized` runs the same blocks but allocates and fills only the
kept layers, and returns them in a `LayerSelectView` indexed by absolute layer number.
"""

import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial

import torch
from torch.profiler import record_function

from vggt.layers.vision_transformer import DinoVisionTransformer
from vggt.models.aggregator import ATTENTION_TYPES, Aggregator, check_images
from vggt.parallel.group import FrameLayout, SequenceGroup
from vggt.parallel.sequence import SequenceParallelBlocks
from vggt.streaming.blocks import StreamedBlocks
from vggt.streaming.chunks import ChunkPolicy
from vggt.streaming.offload import COPY_PIECE_BYTES, KeptLayers, OffloadedLayer

Layer = torch.Tensor | OffloadedLayer


def normalize_layer_indices(indices: Iterable[int], depth: int) -> list[int]:
    """Sorted absolute layer indices; ValueError for out-of-range, duplicate or no indices."""
    normalized = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"layer indices must be integers, got {index!r}")
        if not -depth <= index < depth:
            raise ValueError(f"layer index {index} is out of range for depth {depth}")
        normalized.append(index % depth)
    if not normalized:
        raise ValueError("select at least one layer (or None for all of them)")
    duplicates = sorted({i for i in normalized if normalized.count(i) > 1})
    if duplicates:
        raise ValueError(f"layer indices {duplicates} are selected more than once")
    return sorted(normalized)


class LayerSelectView:
    """Read-only, list-like access by absolute layer index to the kept layer outputs.

    `len(view)` is the model depth and `view[i]` accepts any index a depth-long list accepts,
    but only kept layers are stored: another index raises KeyError naming the kept ones, an
    index outside the depth raises IndexError, and slices raise TypeError.
    `i in view` is True when layer `i` is kept. Iteration yields every layer in order when all
    are kept and raises TypeError otherwise (use `items()`), so code written for a full list
    never sees a shorter sequence. The repr shows indices and shapes, never tensor data.

    Built as `LayerSelectView(layers, depth)` from a mapping of absolute index to output, or
    as the design report does, `LayerSelectView(depth, selected_outputs, orig_indices)`.
    """

    __slots__ = ("_depth", "_layers")

    def __init__(self, *args, **kwargs) -> None:
        form = (
            _mapping_form
            if (args and isinstance(args[0], Mapping)) or "layers" in kwargs
            else _report_form
        )
        try:
            layers, depth = form(*args, **kwargs)
        except TypeError as error:
            raise TypeError(
                "LayerSelectView takes (layers, depth) or (depth, selected_outputs, "
                f"orig_indices): {error}"
            ) from None
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        normalize_layer_indices(list(layers), depth)
        self._depth = depth
        self._layers = {
            index % depth: layers[index] for index in sorted(layers, key=depth.__rmod__)
        }

    @property
    def depth(self) -> int:
        """Number of layers of the model (the length of the full list this view stands for)."""
        return self._depth

    @property
    def selected_count(self) -> int:
        """Number of layers actually stored."""
        return len(self._layers)

    @property
    def orig_indices(self) -> list[int]:
        """The stored absolute layer indices, sorted."""
        return list(self._layers)

    def _absolute(self, index: object) -> int:
        if isinstance(index, slice):
            raise TypeError("LayerSelectView does not support slicing; index single layers")
        try:
            position = operator.index(index)
        except TypeError:
            raise TypeError(f"layer indices must be integers, got {type(index).__name__}") from None
        if not -self._depth <= position < self._depth:
            raise IndexError(f"layer index {position} is out of range for depth {self._depth}")
        return position % self._depth

    def __getitem__(self, index: int) -> torch.Tensor:
        layer = self._absolute(index)
        if layer not in self._layers:
            raise KeyError(
                f"layer {index} was not kept; the available layers are {self.orig_indices}"
            )
        return self._layers[layer]

    def __len__(self) -> int:
        return self._depth

    def __contains__(self, index: object) -> bool:
        if isinstance(index, torch.Tensor):
            raise TypeError("`in` on a LayerSelectView takes a layer index, not a tensor")
        try:
            return self._absolute(index) in self._layers
        except IndexError:
            return False

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.selected_count != self._depth:
            raise TypeError(
                f"cannot iterate a LayerSelectView that keeps {self.orig_indices} of "
                f"{self._depth} layers; use items() or index the kept layers"
            )
        return iter(self._layers.values())

    def __reversed__(self) -> Iterator[torch.Tensor]:
        return reversed(list(iter(self)))

    def items(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(absolute index, tensor) for each kept layer, in ascending order."""
        return iter(self._layers.items())

    def __repr__(self) -> str:
        first = next(iter(self._layers.values()))
        return (
            f"LayerSelectView(depth={self._depth}, kept={self.orig_indices}, "
            f"shape={tuple(first.shape)}, dtype={first.dtype})"
        )


def _mapping_form(layers: Mapping[int, Layer], depth: int) -> tuple[Mapping[int, Layer], int]:
    return layers, depth


def _report_form(
    depth: int, selected_outputs: Sequence[Layer], orig_indices: Sequence[int]
) -> tuple[Mapping[int, Layer], int]:
    if len(selected_outputs) != len(orig_indices):
        raise ValueError(
            f"{len(selected_outputs)} selected outputs for {len(orig_indices)} orig_indices"
        )
    normalize_layer_indices(list(orig_indices), depth)
    return dict(zip(orig_indices, selected_outputs, strict=True)), depth


class AggregatorVramOptimized(Aggregator):
    """`Aggregator` with the same weights that stores only `selected_layer_idx` (None: all).

    forward returns `(view, patch_start_idx, kept_indices)`. A dropped layer is never
    concatenated; a kept one is written half by half into its output buffer, so no
    intermediate outlives the block that made it. Without autograd, every block (the DINOv2
    backbone's too) runs in place through `vggt.streaming`, in token chunks whose temporaries
    stay within `transient_budget` times the residual stream (`ChunkPolicy`; None: the whole
    stream at once), building each long group's K/V chunk by chunk: the MLP hidden state and
    qkv never exist for the whole sequence at once. With `offload_device` (e.g. "cpu") and
    autograd off, kept layers go to host memory (page-locked on CUDA) while the next blocks
    run, in copies of at most `offload_piece_bytes`, and come back as `OffloadedLayer`s, which
    `VGGTOptimized` reads frame chunk by frame chunk. `after_block`, when set, is called with 1
    after each of the 2 x depth blocks.
    """

    def __init__(
        self,
        *args,
        selected_layer_idx: Iterable[int] | None = None,
        transient_budget: float | None = 1.0,
        min_chunk_tokens: int | None = None,
        offload_device: str | torch.device | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.offload_device = None if offload_device is None else torch.device(offload_device)
        self.offload_piece_bytes = COPY_PIECE_BYTES
        self.block_runner = StreamedBlocks(ChunkPolicy(transient_budget, min_chunk_tokens))
        if isinstance(self.patch_embed, DinoVisionTransformer):
            self.patch_embed.block_runner = self.block_runner
        self.selected_layer_idx: list[int] | None = None
        self.keep_layers(selected_layer_idx)
        self.after_block: Callable[[int], None] | None = None

    def keep_layers(self, selected_layer_idx: Iterable[int] | None) -> None:
        """Choose the layers to keep (absolute indices, negative allowed; None keeps all)."""
        if selected_layer_idx is None:
            self.selected_layer_idx = None
        else:
            self.selected_layer_idx = normalize_layer_indices(selected_layer_idx, self.depth)

    @property
    def kept_indices(self) -> list[int]:
        """The absolute indices forward will return."""
        if self.selected_layer_idx is None:
            return list(range(self.depth))
        return list(self.selected_layer_idx)

    def parallelize(self, group: SequenceGroup | None, attention: str = "ulysses") -> None:
        """Split each forward's sequence over `group`'s ranks (None: one device again).

        Every rank then passes only its own frames, consecutive ones in rank order, and gets
        their kept layers back; global attention spans all ranks (`attention`: "ulysses" or
        "ring"). Under autograd (training) global attention is Ulysses'.
        """
        policy = self.block_runner.policy
        if group is None:
            self.block_runner = StreamedBlocks(policy)
        else:
            heads = self.global_blocks[0].attn.num_heads
            self.block_runner = SequenceParallelBlocks(policy, group, attention, heads)
        if isinstance(self.patch_embed, DinoVisionTransformer):
            self.patch_embed.block_runner = self.block_runner

    @property
    def sequence_group(self) -> SequenceGroup | None:
        """The ranks each sequence is split over, if any."""
        runner = self.block_runner
        return runner.group if isinstance(runner, SequenceParallelBlocks) else None

    def frame_layout(self, images: torch.Tensor) -> FrameLayout | None:
        """How this forward's frames lie over the ranks (checked on every rank), or None on one
        device; a collective, so every rank calls it."""
        group = self.sequence_group
        if group is None:
            return None
        self.block_runner.layout = group.layout(
            images, partial(check_images, patch_size=self.patch_size)
        )
        return self.block_runner.layout

    def forward(self, images: torch.Tensor) -> tuple[LayerSelectView, int, list[int]]:
        """images [B, S, 3, H, W] in [0, 1] -> (view of kept layers, patch_start_idx, kept).

        Split over ranks, `images` are this rank's frames and so are the returned layers.
        """
        kept = self.kept_indices
        layout = self.frame_layout(images)
        tokens, pos = self.embed(images, first_frame=layout is None or layout.start() == 0)
        shape = (*images.shape[:2], *tokens.shape[1:])
        target, piece = self._offload_target(), self.offload_piece_bytes
        outputs = KeptLayers(kept, len(ATTENTION_TYPES), tokens.view(shape), target, piece)
        blocks = self.iter_blocks(tokens, pos, shape)
        del tokens
        self.block_runner.before_write = outputs.before_write
        try:
            with record_function("aggregator.blocks"):
                for layer, attn_type, stream in blocks:
                    if layer in outputs:
                        outputs.write(layer, ATTENTION_TYPES.index(attn_type), stream)
                    if self.after_block is not None:
                        self.after_block(1)
        finally:
            self.block_runner.before_write = None
            if layout is not None:
                self.sequence_group.release()
        return LayerSelectView(outputs.finish(), self.depth), self.patch_start_idx, kept

    def _offload_target(self) -> torch.device | None:
        """Where kept layers go: the offload device in inference, else nowhere."""
        if self.offload_device is None or torch.is_grad_enabled() or self.training:
            return None
        return self.offload_device

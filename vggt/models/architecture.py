"""A model's shape as the constructor arguments that size it, and VGGT-1B's, defined once."""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

# The camera token and the register tokens the aggregator puts before each frame's patches.
SPECIAL_TOKENS = 5
# Layers of the DINOv2 ViT-L/14 patch embedding, which runs on each frame's tokens alone.
DINOV2_DEPTH = 24
# Multiply-adds per output pixel of one DPT head (its fusion convolutions at 1/4 to full
# resolution, 256 channels): an approximation for planning, not a count.
DPT_FLOPS_PER_PIXEL = 3.0e6


@dataclass(frozen=True)
class Architecture:
    """The keyword arguments of `Aggregator` and `VGGT` that size the model."""

    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    patch_embed: str
    intermediate_layer_idx: tuple[int, ...]
    tracks: bool = False

    def aggregator_kwargs(self) -> dict:
        """Keyword arguments for `Aggregator` and its subclasses: every field but the heads'."""
        heads = ("intermediate_layer_idx", "tracks")
        return {k: v for k, v in asdict(self).items() if k not in heads}

    def model_kwargs(self) -> dict:
        """Keyword arguments for `VGGT` and its subclasses (the track head only with `tracks`:
        it needs query points)."""
        return {
            **self.aggregator_kwargs(),
            "intermediate_layer_idx": self.intermediate_layer_idx,
            "enable_track": self.tracks,
        }

    def head_layers(self) -> list[int]:
        """The aggregator layers the heads read: the DPT layers and the camera head's last."""
        return sorted({i % self.depth for i in self.intermediate_layer_idx} | {self.depth - 1})

    def tokens_per_frame(self, height: int, width: int) -> int:
        """Tokens of one frame in the aggregator: its patches and the special tokens."""
        return (height // self.patch_size) * (width // self.patch_size) + SPECIAL_TOKENS

    def aggregator_flops(self, frames: int, height: int, width: int, batch: int = 1) -> float:
        """Floating-point operations of one aggregator forward: 2 per multiply-add of the
        linear layers (12 d² weights a token per block) and of attention (4 N² d per block
        over N tokens), for the frame and global blocks and a DINOv2 patch embedding."""
        per_frame = self.tokens_per_frame(height, width)
        linear = 24.0 * batch * frames * per_frame * self.embed_dim**2
        frame_block = linear + 4.0 * batch * frames * per_frame**2 * self.embed_dim
        embed = DINOV2_DEPTH * frame_block if "dinov2" in self.patch_embed else 0
        global_block = self.global_block_flops(frames, height, width, batch)
        return self.depth * (frame_block + global_block) + embed

    def global_block_flops(self, frames: int, height: int, width: int, batch: int = 1) -> float:
        """Operations of one global-attention block: its linear layers and attention over all
        the sequence's tokens."""
        tokens = batch * frames * self.tokens_per_frame(height, width)
        return 24.0 * tokens * self.embed_dim**2 + 4.0 * batch * tokens**2 * self.embed_dim

    def heads_flops(self, frames: int, height: int, width: int, batch: int = 1) -> float:
        """Approximate operations of the depth and point heads (the camera head's are small)."""
        return 2 * 2.0 * DPT_FLOPS_PER_PIXEL * batch * frames * height * width

    def tag(self) -> str:
        """Eight hex digits that change whenever any field changes."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:8]

    def with_config(self, config: Mapping[str, object]) -> "Architecture":
        """This shape with the sizing arguments that a model's constructor config sets (the
        config's other keys, such as the heads' switches, are ignored)."""
        names = {field.name for field in fields(self)}
        changes = {key: value for key, value in config.items() if key in names}
        if "intermediate_layer_idx" in changes:
            changes["intermediate_layer_idx"] = tuple(changes["intermediate_layer_idx"])
        return replace(self, **changes)


VGGT_1B = Architecture(
    img_size=518,
    patch_size=14,
    embed_dim=1024,
    depth=24,
    num_heads=16,
    patch_embed="dinov2_vitl14_reg",
    intermediate_layer_idx=(4, 11, 17, 23),
)

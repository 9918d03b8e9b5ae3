"""A model's shape as the constructor arguments that size it, and VGGT-1B's, defined once."""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace


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

    def aggregator_kwargs(self) -> dict:
        """Keyword arguments for `Aggregator` and its subclasses: every field but the heads'."""
        return {k: v for k, v in asdict(self).items() if k != "intermediate_layer_idx"}

    def model_kwargs(self) -> dict:
        """Keyword arguments for `VGGT` and its subclasses (the track head off: no queries)."""
        return {
            **self.aggregator_kwargs(),
            "intermediate_layer_idx": self.intermediate_layer_idx,
            "enable_track": False,
        }

    def head_layers(self) -> list[int]:
        """The aggregator layers the heads read: the DPT layers and the camera head's last."""
        return sorted({i % self.depth for i in self.intermediate_layer_idx} | {self.depth - 1})

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

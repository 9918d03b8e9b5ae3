"""What a fine-tune trains: parts of the model by name, or a preset like upstream's configs."""

from torch import nn

# Part name -> the model attribute holding it.
PARTS = {
    "aggregator": "aggregator",
    "camera": "camera_head",
    "depth": "depth_head",
    "point": "point_head",
    "track": "track_head",
}
PRESETS = {
    "frozen-aggregator": ("camera", "depth", "point"),
    "unfrozen-aggregator": ("aggregator", "camera", "depth", "point"),
    "all": tuple(PARTS),
}
# Parameters no forward reads (VGGT passes no masks to DINOv2): frozen whatever trains.
NEVER_TRAINED = frozenset({"aggregator.patch_embed.mask_token", "patch_embed.mask_token"})


def parse_trainable(spec: str) -> tuple[str, ...]:
    """A preset name or comma-separated part names -> the parts, in `PARTS` order; ValueError
    naming the choices for anything else."""
    if spec.strip() in PRESETS:
        return PRESETS[spec.strip()]
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in PARTS]
    if unknown or not names:
        raise ValueError(
            f"unknown trainable part(s) {unknown or spec!r}; give a preset "
            f"({', '.join(PRESETS)}) or parts from {', '.join(PARTS)}"
        )
    return tuple(name for name in PARTS if name in names)


def set_trainable(model: nn.Module, parts: tuple[str, ...]) -> list[nn.Parameter]:
    """Make `parts` of a VGGT (or, with parts ("aggregator",), of an aggregator alone) require
    grad and freeze the rest; returns the trainable parameters. ValueError for a part the model
    lacks (a disabled head)."""
    standalone = not hasattr(model, "aggregator")
    if standalone and set(parts) != {"aggregator"}:
        raise ValueError(f"an aggregator alone trains only 'aggregator', not {', '.join(parts)}")
    model.requires_grad_(False)
    trainable = []
    for part in parts:
        module = model if standalone else getattr(model, PARTS[part], None)
        if module is None:
            raise ValueError(f"the model has no {part} head to train (it is disabled)")
        prefix = "" if standalone else f"{PARTS[part]}."
        for name, parameter in module.named_parameters():
            if f"{prefix}{name}" not in NEVER_TRAINED:
                parameter.requires_grad_(True)
                trainable.append(parameter)
    return trainable

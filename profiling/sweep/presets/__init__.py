"""Sweep presets: each TOML file in this folder names an architecture and a case grid."""

import tomllib
from dataclasses import dataclass
from pathlib import Path

from profiling.sweep.cases import Architecture, SweepSettings, parse_precision

PRESET_DIR = Path(__file__).parent


class PresetError(ValueError):
    """A preset that does not exist or does not parse."""


@dataclass(frozen=True)
class Preset:
    """A named architecture and the default grid swept over it."""

    name: str
    architecture: Architecture
    settings: SweepSettings


def preset_names() -> list[str]:
    """The presets shipped in this folder, sorted."""
    return sorted(path.stem for path in PRESET_DIR.glob("*.toml"))


def load_preset(name: str) -> Preset:
    """Read `<name>.toml`; PresetError for an unknown name or a malformed file."""
    path = PRESET_DIR / f"{name}.toml"
    if name not in preset_names():
        raise PresetError(f"unknown preset {name!r}; choose from {', '.join(preset_names())}")
    try:
        data = tomllib.loads(path.read_text())
        model = data["architecture"]
        sweep = data["sweep"]
        architecture = Architecture(
            img_size=int(model["img_size"]),
            patch_size=int(model["patch_size"]),
            embed_dim=int(model["embed_dim"]),
            depth=int(model["depth"]),
            num_heads=int(model["num_heads"]),
            patch_embed=str(model["patch_embed"]),
            intermediate_layer_idx=tuple(int(i) for i in model["intermediate_layer_idx"]),
        )
        mode = str(sweep.get("dtype_mode", "autocast"))
        settings = SweepSettings(
            variants=tuple(sweep["variants"]),
            components=tuple(sweep["components"]),
            frames=tuple(int(f) for f in sweep["frames"]),
            batch=tuple(int(b) for b in sweep["batch"]),
            image_sizes=tuple((int(h), int(w)) for h, w in sweep["image_sizes"]),
            precisions=tuple(parse_precision(d, mode) for d in sweep["dtypes"]),
            warmup=int(sweep["warmup"]),
            repeats=int(sweep["repeats"]),
        )
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as error:
        raise PresetError(f"preset {name!r} ({path}) is malformed: {error}") from None
    return Preset(name, architecture, settings)

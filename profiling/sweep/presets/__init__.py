"""Sweep presets: each TOML file in this folder names an architecture and a case grid."""

import tomllib
from dataclasses import dataclass
from pathlib import Path

from profiling.sweep.cases import SweepSettings
from vggt.models.architecture import VGGT_1B, Architecture
from vggt.precision import get_precision

PRESET_DIR = Path(__file__).parent


class PresetError(ValueError):
    """A preset that does not exist or does not parse."""


# Architectures a preset may name instead of listing every field.
NAMED_ARCHITECTURES = {"vggt-1b": VGGT_1B}


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
        sweep = data["sweep"]
        architecture = read_architecture(data["architecture"])
        settings = SweepSettings(
            variants=tuple(sweep["variants"]),
            components=tuple(sweep["components"]),
            frames=tuple(int(f) for f in sweep["frames"]),
            batch=tuple(int(b) for b in sweep["batch"]),
            image_sizes=tuple((int(h), int(w)) for h, w in sweep["image_sizes"]),
            precisions=tuple(get_precision(str(p)) for p in sweep["precisions"]),
            warmup=int(sweep["warmup"]),
            repeats=int(sweep["repeats"]),
        )
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as error:
        raise PresetError(f"preset {name!r} ({path}) is malformed: {error}") from None
    return Preset(name, architecture, settings)


def read_architecture(table: dict) -> Architecture:
    """A preset's `[architecture]`: `name = "vggt-1b"` (a library constant), else every field."""
    if "name" in table:
        return NAMED_ARCHITECTURES[table["name"]]
    return Architecture(
        img_size=int(table["img_size"]),
        patch_size=int(table["patch_size"]),
        embed_dim=int(table["embed_dim"]),
        depth=int(table["depth"]),
        num_heads=int(table["num_heads"]),
        patch_embed=str(table["patch_embed"]),
        intermediate_layer_idx=tuple(int(i) for i in table["intermediate_layer_idx"]),
    )

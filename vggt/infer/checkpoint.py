"""The model a checkpoint names: where its weights are, the architecture they belong to, and
the memory-lean model built from both with weights-only loading."""

import inspect
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from vggt.infer.errors import InputError
from vggt.models.architecture import VGGT_1B, Architecture
from vggt.models.hub import CONFIG_FILE, HUB_ID, import_optional
from vggt.models.vggt import VGGT, read_state_dict
from vggt.models.vggt_vram_optimized import VGGTOptimized

WEIGHT_FILES = ("model.safetensors", "model.pt")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
OPTIMIZED_ONLY = ("selected_layer_idx", "offload_outputs")
SHOWN_KEYS = 3


@dataclass(frozen=True)
class Checkpoint:
    """A weights file, the constructor arguments of its model, and where those came from."""

    weights: Path
    config: dict
    config_source: str

    @property
    def architecture(self) -> Architecture:
        """The model's shape: VGGT-1B's with what the config sets."""
        return VGGT_1B.with_config(self.config)


def resolve_checkpoint(name: str, config_file: str | None = None) -> Checkpoint:
    """The checkpoint `name` names: a weights file (model.pt or .safetensors; VGGT-1B's
    architecture), a save_pretrained folder (its config.json), or a hub id (downloaded, or
    from the cache). `config_file`, a JSON file of constructor arguments, overrides either.
    InputError when nothing is there."""
    path = Path(name).expanduser()
    if path.is_file():
        checkpoint = Checkpoint(path, {}, "VGGT-1B's architecture")
    elif path.is_dir():
        checkpoint = _folder_checkpoint(path)
    elif HUB_ID.match(name) and not name.endswith(WEIGHT_SUFFIXES):
        checkpoint = _hub_checkpoint(name)
    else:
        raise InputError(f"no checkpoint at {name} (a file, a folder or a hub id)")
    if config_file is not None:
        config = read_config(config_file, f"--config {config_file}")
        checkpoint = Checkpoint(checkpoint.weights, config, f"--config {config_file}")
    return checkpoint


def _folder_checkpoint(folder: Path) -> Checkpoint:
    """A save_pretrained folder's weights and its config.json (VGGT-1B's without one)."""
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        raise InputError(f"checkpoint folder {folder} holds none of {', '.join(WEIGHT_FILES)}")
    config_path = folder / CONFIG_FILE
    if config_path.is_file():
        return Checkpoint(weights[0], read_config(config_path), str(config_path))
    return Checkpoint(weights[0], {}, "VGGT-1B's architecture")


def _hub_checkpoint(repo_id: str) -> Checkpoint:
    """The weights and config of hub repository `repo_id` (downloaded, or from the cache when
    offline); InputError when neither the hub nor the cache has them, or without
    huggingface_hub."""
    try:
        hf_hub_download = import_optional(
            "huggingface_hub", "loading it from the hub"
        ).hf_hub_download
    except ImportError as error:
        raise InputError(f"no checkpoint {repo_id}: {error}") from None
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    weights, uncached = None, None
    for filename in WEIGHT_FILES:
        try:
            weights = Path(hf_hub_download(repo_id, filename))
            break
        except LocalEntryNotFoundError as error:
            uncached = error
        except EntryNotFoundError:
            continue
        except Exception as error:  # the hub's errors vary by version and cause
            raise InputError(f"no checkpoint {repo_id}: {_first_line(error)}") from None
    if weights is None and uncached is not None:
        raise InputError(
            f"no checkpoint {repo_id}: not a local file or folder, and the hub cannot be reached "
            f"and its cache lacks it ({_first_line(uncached)})"
        )
    if weights is None:
        raise InputError(f"hub repository {repo_id} holds none of {', '.join(WEIGHT_FILES)}")
    try:
        config_path = Path(hf_hub_download(repo_id, CONFIG_FILE))
    except EntryNotFoundError:
        return Checkpoint(weights, {}, "VGGT-1B's architecture")
    return Checkpoint(weights, read_config(config_path), f"{repo_id}/{CONFIG_FILE}")


def _first_line(error: BaseException) -> str:
    """The first line of `error`'s message, or its repr when it has none."""
    return str(error).splitlines()[0] if str(error).strip() else repr(error)


def read_config(path: str | Path, source: str | None = None) -> dict:
    """The JSON object of constructor arguments at `path`, checked (`check_config`);
    InputError otherwise."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read model config {path}: {error}") from None
    if not isinstance(config, dict):
        raise InputError(f"model config {path} must be a JSON object of constructor arguments")
    check_config(config, source or str(path))
    return config


def check_config(config: Mapping, source: str) -> None:
    """InputError for keys that are no constructor argument of the model."""
    known = set(inspect.signature(VGGT.__init__).parameters) - {"self"} | set(OPTIMIZED_ONLY)
    unknown = sorted(set(config) - known)
    if unknown:
        raise InputError(f"model config {source} has unknown keys {unknown}")


def _meta_model(checkpoint: Checkpoint, offload: bool) -> VGGTOptimized:
    """The model of `checkpoint`'s config without storage; InputError for a config the
    constructor refuses."""
    try:
        with torch.device("meta"):
            return VGGTOptimized(**{**checkpoint.config, "offload_outputs": offload})
    except (TypeError, ValueError) as error:
        raise InputError(f"model config {checkpoint.config_source}: {error}") from None


def read_weights(checkpoint: Checkpoint) -> Mapping[str, torch.Tensor]:
    """The checkpoint's state dict (weights only, memory-mapped where the format allows, so
    little is read yet), checked against its model; InputError when it cannot be read or
    does not match."""
    expected = _meta_model(checkpoint, offload=False).state_dict()
    try:
        state_dict = read_state_dict(checkpoint.weights)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, ImportError) as error:
        raise InputError(
            f"cannot load checkpoint {checkpoint.weights}: {_first_line(error)}"
        ) from None
    mismatch = describe_mismatch(expected, state_dict)
    if mismatch:
        raise InputError(
            f"checkpoint {checkpoint.weights} does not match the model of "
            f"{checkpoint.config_source}: {mismatch}"
        )
    return state_dict


def build_model(
    checkpoint: Checkpoint, state_dict: Mapping[str, torch.Tensor], offload: bool
) -> VGGTOptimized:
    """The model of `checkpoint` on the CPU in fp32 and in eval mode, holding `state_dict`
    (from `read_weights`) as its parameters."""
    model = _meta_model(checkpoint, offload)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.float().eval()


def describe_mismatch(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]
) -> str | None:
    """Missing keys, unexpected keys and shape differences in a few words, or None."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [
        f"{key} {list(found[key].shape)} for {list(expected[key].shape)}"
        for key in expected
        if key in found and found[key].shape != expected[key].shape
    ]
    parts = [
        _listed(items, label)
        for items, label in (
            (missing, "missing"),
            (unexpected, "unexpected"),
            (reshaped, "of another shape"),
        )
        if items
    ]
    return "; ".join(parts) or None


def _listed(items: list[str], label: str) -> str:
    shown = ", ".join(items[:SHOWN_KEYS]) + (", ..." if len(items) > SHOWN_KEYS else "")
    return f"{len(items)} {label} ({shown})"

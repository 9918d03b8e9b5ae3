"""Saving and loading weights: `model.pt` and `.safetensors` files, and `save_pretrained` folders
or hub repositories (config.json plus model.safetensors). The optional packages are imported
only where needed: safetensors to read or write its files, huggingface_hub to download."""

import importlib
import inspect
import json
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Self

import torch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# A hub repository id: "owner/name".
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def import_optional(module: str, purpose: str) -> ModuleType:
    """`module`, imported now; ImportError naming its package and how to install it."""
    package = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the {package} package: pip install {package}"
        ) from error


def read_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The state dict in `model.pt` (loaded weights only; memory-mapped unless in the legacy
    format, so shapes are known before the data is read) or a `.safetensors` file, on the
    CPU; FileNotFoundError without a file, ValueError when it is no valid safetensors file or
    holds anything but tensors, ImportError for a `.safetensors` file without safetensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        load_file = import_optional("safetensors.torch", f"reading {path}").load_file
        from safetensors import SafetensorError

        try:
            state_dict = load_file(path, device="cpu")
        except SafetensorError as error:
            raise ValueError(f"{path} is no valid safetensors file: {error}") from None
    else:
        mmap = zipfile.is_zipfile(path)
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state_dict.values()
    ):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state_dict


def constructor_config(cls: type, args: tuple = (), kwargs: Mapping | None = None) -> dict:
    """The keyword arguments `cls(*args, **kwargs)` amounts to, defaults included; what an
    `__init__` passes on as *args/**kwargs is bound to its parent's (a HubMixin class)."""
    owner = next(base for base in cls.__mro__ if "__init__" in vars(base))
    signature = inspect.signature(owner.__init__)
    bound = signature.bind(None, *args, **(kwargs or {}))
    bound.apply_defaults()
    config: dict[str, Any] = {}
    passed_args, passed_kwargs = (), {}
    for name, value in list(bound.arguments.items())[1:]:
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            passed_args = value
        elif kind is inspect.Parameter.VAR_KEYWORD:
            passed_kwargs = value
        else:
            config[name] = value
    later = cls.__mro__[cls.__mro__.index(owner) + 1 :]
    parent = next(base for base in later if "__init__" in vars(base))
    forwards = any(parameter.kind in VARIADIC for parameter in signature.parameters.values())
    if forwards and issubclass(parent, HubMixin):
        return {**constructor_config(parent, passed_args, passed_kwargs), **config}
    return config


class HubMixin:
    """`save_pretrained` and `from_pretrained` for an `nn.Module` whose constructor arguments
    are JSON values; `config` holds those arguments, defaults included, from construction."""

    config: dict

    def __new__(cls, *args, **kwargs) -> Self:
        instance = super().__new__(cls)
        try:
            instance.config = constructor_config(cls, args, kwargs)
        except TypeError as error:
            raise TypeError(f"{cls.__name__}() {error}") from None
        return instance

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write `config` as `config.json` (iterables as lists) and the state dict as
        `model.safetensors` into `folder`, made if missing."""
        safetensors = import_optional("safetensors.torch", f"writing {WEIGHTS_FILE}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = json.dumps(self.config, indent=2, sort_keys=True, default=list)
        (folder / CONFIG_FILE).write_text(config + "\n")
        tensors = {name: tensor.contiguous() for name, tensor in self.state_dict().items()}
        safetensors.save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(
        cls, name: str | os.PathLike, *, strict: bool = True, **overrides: Any
    ) -> Self:
        """The model in `save_pretrained` folder or hub repository `name` (downloaded, or from
        the cache), built from its config.json with `overrides` over it, in eval mode.

        Config keys this class does not take are left out (a VGGTOptimized folder loads as a
        VGGT); `strict` as for `load_state_dict`."""
        folder = Path(name)
        if folder.is_dir():
            config_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        elif HUB_ID.match(str(name)):
            config_path, weights = download(str(name))
        else:
            raise FileNotFoundError(f"{name} is no model folder and no hub repository id")
        config = {}
        if config_path is not None and config_path.is_file():
            config = json.loads(config_path.read_text())
        known = constructor_config(cls)
        taken = {key: value for key, value in config.items() if key in known}
        model = cls(**{**taken, **overrides})
        model.load_state_dict(read_state_dict(weights), strict=strict)
        return model.eval()


def download(repo_id: str) -> tuple[Path | None, Path]:
    """The config.json (None when the repository has none) and model.safetensors of hub
    repository `repo_id`, downloaded or from the cache; ImportError without huggingface_hub."""
    hub = import_optional("huggingface_hub", f"loading hub repository {repo_id}")
    from huggingface_hub.utils import EntryNotFoundError

    weights = Path(hub.hf_hub_download(repo_id, WEIGHTS_FILE))
    try:
        config_path = Path(hub.hf_hub_download(repo_id, CONFIG_FILE))
    except EntryNotFoundError:
        config_path = None
    return config_path, weights

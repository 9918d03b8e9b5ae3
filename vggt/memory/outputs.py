"""What a forward returned: its tensors by name and the bytes behind them, on the device and
offloaded to the host."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from vggt.models.aggregator_vram_optimized import LayerSelectView
from vggt.streaming.offload import OffloadedLayer


def named_outputs(result: Any, name: str = "") -> dict[str, torch.Tensor | OffloadedLayer]:
    """Every tensor of a forward's result by name: `layer04` for an aggregator's layers (a list
    or a view, in the tuple it returns), a prediction's key, `key.i` in a listed prediction."""
    if isinstance(result, torch.Tensor | OffloadedLayer):
        return {name: result}
    if isinstance(result, LayerSelectView | list):
        items = result.items() if isinstance(result, LayerSelectView) else enumerate(result)
        children = [(f"{name}.{i}" if name else f"layer{i:02d}", value) for i, value in items]
    elif isinstance(result, Mapping):
        children = list(result.items())
    elif isinstance(result, tuple):
        children = [(name, item) for item in result]
    else:
        return {}
    found: dict[str, torch.Tensor | OffloadedLayer] = {}
    for child, value in children:
        found.update(named_outputs(value, child))
    return found


@dataclass(frozen=True)
class OutputBytes:
    """Bytes of the distinct storages a result holds: on its device, and offloaded to the host."""

    device: int
    host: int


def output_bytes(
    tensors: Iterable[torch.Tensor | OffloadedLayer], exclude: Iterable[torch.Tensor] = ()
) -> OutputBytes:
    """Bytes behind `tensors`, each storage once (views of one buffer count once), leaving out
    the storages of `exclude`; an offloaded layer counts its own bytes (the kept layers share
    one host block) as host memory, and so does a meta tensor (a fake pass's stand-in for
    what goes to the host)."""
    seen = {StorageWeakRef(tensor.untyped_storage()) for tensor in exclude}
    totals = {"device": 0, "host": 0}
    for value in tensors:
        if isinstance(value, OffloadedLayer):
            totals["host"] += value.host.numel() * value.host.element_size()
            continue
        storage = value.untyped_storage()
        if StorageWeakRef(storage) not in seen:
            seen.add(StorageWeakRef(storage))
            totals["host" if value.device.type == "meta" else "device"] += storage.nbytes()
    return OutputBytes(**totals)

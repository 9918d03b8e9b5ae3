"""What a forward returned: its tensors by name, their bytes, and differences between variants."""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vggt.models.aggregator_vram_optimized import LayerSelectView

# Elements compared at once, to bound the float64 temporaries of a comparison.
COMPARE_CHUNK = 1 << 22


def named_tensors(result: Any) -> dict[str, torch.Tensor]:
    """Tensors of an aggregator or model result keyed by name (`layer04`, `depth`, ...).

    Aggregator results are tuples whose first item holds the layers (a list or a view);
    model results are prediction dicts whose list values get an index suffix.
    """
    if isinstance(result, tuple):
        result = result[0]
    if isinstance(result, LayerSelectView):
        return {f"layer{index:02d}": tensor for index, tensor in result.items()}
    if isinstance(result, list):
        return {f"layer{index:02d}": tensor for index, tensor in enumerate(result)}
    if isinstance(result, Mapping):
        named = {}
        for name, value in result.items():
            if isinstance(value, torch.Tensor):
                named[name] = value
            elif isinstance(value, list | tuple):
                named.update({f"{name}.{i}": item for i, item in enumerate(value)})
        return named
    raise TypeError(f"cannot read tensors from a {type(result).__name__} result")


def storage_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one buffer count once)."""
    storages = {}
    for tensor in tensors.values():
        storage = tensor.untyped_storage()
        storages[(tensor.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


@dataclass(frozen=True)
class Difference:
    """Largest absolute difference, and that relative to the baseline's largest magnitude."""

    max_abs_diff: float
    max_rel_diff: float
    compared: int


def compare(
    outputs: Mapping[str, torch.Tensor], baseline: Mapping[str, torch.Tensor]
) -> Difference:
    """Compare the tensors both hold, chunk by chunk in float64 on the CPU.

    ValueError when they share no name or a shared name has different shapes.
    """
    shared = [name for name in outputs if name in baseline]
    if not shared:
        raise ValueError("the outputs share no tensor name with the baseline's")
    max_abs = 0.0
    max_rel = 0.0
    for name in shared:
        ours, reference = outputs[name], baseline[name]
        if ours.shape != reference.shape:
            raise ValueError(
                f"{name}: shape {tuple(ours.shape)} differs from the baseline's "
                f"{tuple(reference.shape)}"
            )
        ours, reference = ours.reshape(-1), reference.reshape(-1)
        tensor_abs = 0.0
        magnitude = 0.0
        for start in range(0, ours.numel(), COMPARE_CHUNK):
            a = ours[start : start + COMPARE_CHUNK].to("cpu", torch.float64)
            b = reference[start : start + COMPARE_CHUNK].to("cpu", torch.float64)
            tensor_abs = _max_keeping_nan(tensor_abs, (a - b).abs().max().item())
            magnitude = _max_keeping_nan(magnitude, b.abs().max().item())
        max_abs = _max_keeping_nan(max_abs, tensor_abs)
        if magnitude != 0:
            max_rel = _max_keeping_nan(max_rel, tensor_abs / magnitude)
    return Difference(max_abs, max_rel, len(shared))


def _max_keeping_nan(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)

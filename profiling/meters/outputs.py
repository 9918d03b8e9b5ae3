"""Differences between the outputs of variants (their tensors by name: vggt.memory.outputs)."""

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

# Elements compared at once, to bound the float64 temporaries of a comparison.
COMPARE_CHUNK = 1 << 22


@dataclass(frozen=True)
class Difference:
    """Largest absolute difference, and that relative to the baseline's largest magnitude."""

    max_abs_diff: float
    max_rel_diff: float
    compared: int


def compare(
    outputs: Mapping[str, torch.Tensor], baseline: Mapping[str, torch.Tensor]
) -> Difference:
    """Compare the tensors both hold, chunk by chunk in float64 on the device of the baseline's
    tensor (a GPU compares its own outputs with ones waiting on the CPU without a host pass).

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
            a = ours[start : start + COMPARE_CHUNK].to(reference.device, torch.float64)
            b = reference[start : start + COMPARE_CHUNK].to(reference.device, torch.float64)
            tensor_abs = _max_keeping_nan(tensor_abs, (a - b).abs().max().item())
            magnitude = _max_keeping_nan(magnitude, b.abs().max().item())
        max_abs = _max_keeping_nan(max_abs, tensor_abs)
        if magnitude != 0:
            max_rel = _max_keeping_nan(max_rel, tensor_abs / magnitude)
    return Difference(max_abs, max_rel, len(shared))


def _max_keeping_nan(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def compare_each(
    variants: Mapping[str, Mapping[str, torch.Tensor]], baseline: Mapping[str, torch.Tensor]
) -> dict[str, Difference | ValueError]:
    """Each variant's difference from the baseline's outputs, or the error comparing them."""
    outcomes: dict[str, Difference | ValueError] = {}
    for name, outputs in variants.items():
        try:
            outcomes[name] = compare(outputs, baseline)
        except ValueError as error:
            outcomes[name] = error
    return outcomes

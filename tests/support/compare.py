"""Comparisons of model outputs."""

import torch


def rel_l2(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """||ours - reference|| / ||reference|| in float64."""
    diff = ours.double() - reference.double()
    return (diff.norm() / reference.double().norm()).item()


def assert_same_predictions(actual: dict, expected: dict) -> None:
    """Both prediction dicts hold the same names and bit-identical tensors (lists item by item)."""
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        values = value if isinstance(value, list) else [value]
        others = actual[name] if isinstance(value, list) else [actual[name]]
        for a, b in zip(others, values, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

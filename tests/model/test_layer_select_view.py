"""Hypothesis properties of LayerSelectView indexing for any depth and kept set."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vggt.models.aggregator_vram_optimized import LayerSelectView


@st.composite
def views(draw: st.DrawFn) -> tuple[LayerSelectView, int, set[int]]:
    depth = draw(st.integers(1, 48))
    kept = draw(st.sets(st.integers(0, depth - 1), min_size=1))
    layers = {index: torch.full((1,), float(index)) for index in kept}
    return LayerSelectView(layers, depth), depth, kept


@given(views())
def test_length_and_indices(case: tuple) -> None:
    view, depth, kept = case
    assert len(view) == view.depth == depth
    assert view.selected_count == len(kept)
    assert view.orig_indices == sorted(kept)
    assert len(set(view.orig_indices)) == len(view.orig_indices)


@given(views())
def test_negative_and_positive_indices_agree(case: tuple) -> None:
    view, depth, kept = case
    for index in kept:
        assert view[index] is view[index - depth]
        assert view[index].item() == float(index)


@given(views(), st.data())
def test_unkept_and_out_of_range_indices(case: tuple, data: st.DataObject) -> None:
    view, depth, kept = case
    missing = sorted(set(range(depth)) - kept)
    if missing:
        index = data.draw(st.sampled_from(missing))
        with pytest.raises(KeyError, match="available layers"):
            view[index]
        with pytest.raises(KeyError):
            view[index - depth]
    outside = data.draw(
        st.one_of(st.integers(depth, 4 * depth), st.integers(-4 * depth, -depth - 1))
    )
    with pytest.raises(IndexError):
        view[outside]
    start = data.draw(st.integers(-depth, depth))
    with pytest.raises(TypeError):
        view[start:]


@given(views())
def test_membership_matches_kept_set(case: tuple) -> None:
    view, depth, kept = case
    for index in range(-depth - 2, depth + 2):
        expected = -depth <= index < depth and index % depth in kept
        assert (index in view) == expected

"""Weights load offline: hub-style save/load round trip and strict model.pt loading."""

import pytest
import torch
from safetensors.torch import save_file

from tests.support.configs import SMALL_VGGT
from tests.support.images import seeded_images
from vggt.models.vggt import VGGT
from vggt.models.vggt_vram_optimized import VGGTOptimized

CONFIG = {**SMALL_VGGT, "enable_track": False}


@pytest.fixture(scope="module")
def model() -> VGGT:
    torch.manual_seed(0)
    return VGGT(**CONFIG).eval()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[name], sb[name]) for name in sa)


def test_save_and_from_pretrained_round_trip(model: VGGT, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = VGGT.from_pretrained(tmp_path).eval()
    assert_same_weights(model, loaded)
    images = seeded_images(1, 2, 56, 56)
    with torch.no_grad():
        assert torch.equal(model(images)["depth"], loaded(images)["depth"])


def test_optimized_model_loads_a_vggt_directory(model: VGGT, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model.save_pretrained(tmp_path)
    loaded = VGGTOptimized.from_pretrained(tmp_path)
    assert loaded.aggregator.selected_layer_idx == [1, 2, 4, 5]
    assert_same_weights(model, loaded)


def test_model_pt_loads_strictly_with_weights_only(model: VGGT, tmp_path) -> None:
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    fresh = VGGT(**CONFIG)
    fresh.load_checkpoint(path)
    assert_same_weights(model, fresh)


def test_safetensors_file_loads(model: VGGT, tmp_path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    fresh = VGGTOptimized(**CONFIG)
    fresh.load_checkpoint(path)
    assert_same_weights(model, fresh)


def test_missing_key_fails_strict_load(model: VGGT, tmp_path) -> None:
    state = dict(model.state_dict())
    state.pop("aggregator.camera_token")
    path = tmp_path / "model.pt"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="camera_token"):
        VGGT(**CONFIG).load_checkpoint(path)


class Payload:
    """An arbitrary pickled object: loading must refuse it."""


def test_pickled_objects_are_refused(tmp_path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"weights": Payload()}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        VGGT(**CONFIG).load_checkpoint(path)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        VGGT(**CONFIG).load_checkpoint(tmp_path / "absent.pt")

"""Weights load offline: hub-style save/load round trip and strict model.pt loading."""

import json

import huggingface_hub
import pytest
import torch
from huggingface_hub.utils import EntryNotFoundError
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


def test_config_json_holds_every_constructor_argument(model: VGGT, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    defaults = {"enable_camera": True, "enable_point": True, "enable_depth": True}
    assert config == {**CONFIG, **defaults, "intermediate_layer_idx": [1, 2, 4, 5]}


def test_positional_arguments_are_recorded_by_name() -> None:
    rest = {key: value for key, value in CONFIG.items() if key not in ("img_size", "patch_size")}
    positional = VGGTOptimized(56, 14, selected_layer_idx=range(1, 6), **rest)
    named = VGGTOptimized(**CONFIG, selected_layer_idx=range(1, 6))
    assert positional.config == named.config
    assert positional.config["img_size"] == 56
    assert positional.config["offload_outputs"] is False


def test_from_pretrained_overrides_and_drops_foreign_keys(model: VGGT, tmp_path) -> None:
    saved = VGGTOptimized(**CONFIG, selected_layer_idx=range(1, 6), offload_outputs=True)
    saved.load_state_dict(model.state_dict())
    saved.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["selected_layer_idx"] == [1, 2, 3, 4, 5]
    loaded = VGGTOptimized.from_pretrained(tmp_path)
    assert (loaded.aggregator.kept_indices, loaded.aggregator.offload_device) == (
        [1, 2, 3, 4, 5],
        torch.device("cpu"),
    )
    assert not loaded.training
    overridden = VGGTOptimized.from_pretrained(tmp_path, offload_outputs=False)
    assert overridden.aggregator.offload_device is None
    plain = VGGT.from_pretrained(tmp_path)
    assert type(plain) is VGGT and "offload_outputs" not in plain.config
    assert_same_weights(model, plain)


def test_from_pretrained_is_strict(model: VGGT, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="track_head"):
        VGGT.from_pretrained(tmp_path, enable_track=True)
    loaded = VGGT.from_pretrained(tmp_path, enable_track=True, strict=False)
    assert loaded.track_head is not None


def test_hub_repository_is_downloaded(model: VGGT, tmp_path, monkeypatch) -> None:
    model.save_pretrained(tmp_path)
    requests = []

    def download(repo_id: str, filename: str) -> str:
        requests.append((repo_id, filename))
        if filename == "config.json" and repo_id == "owner/bare":
            raise EntryNotFoundError(f"{repo_id} has no {filename}")
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert_same_weights(model, VGGT.from_pretrained("owner/repo"))
    assert requests == [("owner/repo", "model.safetensors"), ("owner/repo", "config.json")]
    assert_same_weights(model, VGGT.from_pretrained("owner/bare", **CONFIG))
    # without a config.json the defaults hold: 24 layers where the weights have 6
    unset_depth = {key: value for key, value in CONFIG.items() if key != "depth"}
    with pytest.raises(RuntimeError, match="Missing key"):
        VGGT.from_pretrained("owner/bare", **unset_depth)


def test_from_pretrained_refuses_what_is_no_folder_or_repo_id(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no model folder and no hub repository id"):
        VGGT.from_pretrained(tmp_path / "absent" / "folder")


def test_damaged_safetensors_file_is_a_value_error(model: VGGT, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(ValueError, match="no valid safetensors file"):
        VGGT(**CONFIG).load_checkpoint(path)


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

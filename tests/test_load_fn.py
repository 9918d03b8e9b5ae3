"""Tests for vggt.utils.load_fn image loading and preprocessing."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vggt.utils.load_fn import load_and_preprocess_images, load_and_preprocess_images_square


def write_png(
    directory: Path,
    name: str,
    width: int,
    height: int,
    color: tuple[int, ...] = (0, 0, 0),
    mode: str = "RGB",
) -> Path:
    """Write a solid-colour PNG of the given size and mode and return its path."""
    path = directory / name
    Image.new(mode, (width, height), color).save(path)
    return path


def test_crop_landscape_4_3(tmp_path: Path) -> None:
    path = write_png(tmp_path, "land.png", 640, 480, (10, 20, 30))
    images = load_and_preprocess_images([path], mode="crop")
    assert images.shape == (1, 3, 392, 518)
    assert images.dtype == torch.float32
    expected = torch.tensor([10, 20, 30], dtype=torch.float32) / 255
    assert torch.allclose(images[0, :, 196, 259], expected)


def test_crop_portrait_is_center_cropped(tmp_path: Path) -> None:
    path = write_png(tmp_path, "tall.png", 300, 600)
    images = load_and_preprocess_images([str(path)], mode="crop")
    assert images.shape == (1, 3, 518, 518)
    assert float(images.max()) == 0.0


def test_crop_uses_bankers_rounding(tmp_path: Path) -> None:
    # 35 * (518 / 518) / 14 == 2.5 exactly, which Python's round() sends to 2.
    path = write_png(tmp_path, "strip.png", 518, 35)
    assert load_and_preprocess_images([path]).shape == (1, 3, 28, 518)


def test_pad_portrait_white_padding(tmp_path: Path) -> None:
    path = write_png(tmp_path, "portrait.png", 300, 400)
    images = load_and_preprocess_images([path], mode="pad")
    # new_w = round(300 * (518 / 400) / 14) * 14 = 392, so 63 white columns on each side.
    assert images.shape == (1, 3, 518, 518)
    assert torch.all(images[0, :, :, :63] == 1.0)
    assert torch.all(images[0, :, :, 518 - 63 :] == 1.0)
    assert torch.all(images[0, :, :, 63 : 518 - 63] == 0.0)


def test_pad_landscape_white_padding(tmp_path: Path) -> None:
    path = write_png(tmp_path, "landscape.png", 640, 480)
    images = load_and_preprocess_images([path], mode="pad")
    # 392 rows of content, 126 rows of padding split 63 / 63.
    assert images.shape == (1, 3, 518, 518)
    assert torch.all(images[0, :, :63, :] == 1.0)
    assert torch.all(images[0, :, 63 + 392 :, :] == 1.0)
    assert torch.all(images[0, :, 63 : 63 + 392, :] == 0.0)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    clear = write_png(tmp_path, "clear.png", 64, 48, (255, 0, 0, 0), mode="RGBA")
    half = write_png(tmp_path, "half.png", 64, 48, (0, 0, 0, 128), mode="RGBA")
    images = load_and_preprocess_images([clear, half])
    assert images.shape == (2, 3, 392, 518)
    assert torch.all(images[0] == 1.0)
    centre = images[1, :, 196, 259]
    assert torch.allclose(centre, torch.full((3,), 127 / 255), atol=1.5 / 255)


def test_mixed_shapes_warn_and_pad_white(tmp_path: Path) -> None:
    landscape = write_png(tmp_path, "a.png", 640, 480)
    portrait = write_png(tmp_path, "b.png", 300, 600)
    with pytest.warns(UserWarning, match="different shapes"):
        images = load_and_preprocess_images([landscape, portrait], mode="crop")
    assert images.shape == (2, 3, 518, 518)
    assert torch.all(images[0, :, :63, :] == 1.0)
    assert torch.all(images[0, :, 63 : 63 + 392, :] == 0.0)
    assert torch.all(images[0, :, 63 + 392 :, :] == 1.0)
    assert torch.all(images[1] == 0.0)


def test_to_tensor_scaling(tmp_path: Path) -> None:
    path = tmp_path / "gradient.png"
    row = np.arange(0, 256, 255 / 517, dtype=np.float64).round().astype(np.uint8)[:518]
    Image.fromarray(np.tile(row, (518, 1))).convert("RGB").save(path)
    images = load_and_preprocess_images([path])
    assert images.shape == (1, 3, 518, 518)
    expected = torch.from_numpy(row.astype(np.float32)) / 255
    assert torch.equal(images[0, 0, 0], expected)
    assert torch.equal(images[0, 2, 517], expected)


def test_invalid_arguments(tmp_path: Path) -> None:
    path = write_png(tmp_path, "x.png", 32, 32)
    with pytest.raises(ValueError, match="empty"):
        load_and_preprocess_images([])
    with pytest.raises(ValueError, match="mode"):
        load_and_preprocess_images([path], mode="stretch")
    with pytest.raises(ValueError, match="empty"):
        load_and_preprocess_images_square([])


def test_square_loader_shapes_and_coords(tmp_path: Path) -> None:
    wide = write_png(tmp_path, "wide.png", 200, 100, (255, 255, 255))
    tall = write_png(tmp_path, "tall.png", 50, 100, (255, 255, 255))
    images, coords = load_and_preprocess_images_square([wide, tall], target_size=64)
    assert images.shape == (2, 3, 64, 64)
    assert coords.shape == (2, 6)
    assert coords.dtype == torch.float32
    # wide: square side 200, image pasted at (0, 50), scale 64 / 200.
    assert torch.allclose(coords[0], torch.tensor([0.0, 16.0, 64.0, 48.0, 200.0, 100.0]))
    # tall: square side 100, image pasted at (25, 0), scale 64 / 100.
    assert torch.allclose(coords[1], torch.tensor([16.0, 0.0, 48.0, 64.0, 50.0, 100.0]))
    # Black padding above and below the wide image, white content in the middle.
    assert torch.all(images[0, :, :10, :] == 0.0)
    assert torch.all(images[0, :, 20:44, :] == 1.0)
    assert torch.all(images[1, :, :, :10] == 0.0)
    assert torch.all(images[1, :, :, 20:44] == 1.0)

"""Tests for vggt.utils.load_fn image loading and preprocessing."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vggt.utils.load_fn import (
    ContentBox,
    load_and_preprocess_images,
    load_and_preprocess_images_square,
    load_images_and_boxes,
    read_preprocessing,
)


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


def test_target_size_sets_the_width(tmp_path: Path) -> None:
    path = write_png(tmp_path, "land.png", 640, 480)
    # 480 * (196 / 640) / 14 == 10.5, rounded to 10 rows of patches.
    assert load_and_preprocess_images([path], target_size=196).shape == (1, 3, 140, 196)
    tall = write_png(tmp_path, "tall.png", 100, 300)
    assert load_and_preprocess_images([tall], mode="pad", target_size=196).shape == (1, 3, 196, 196)


def test_header_plan_matches_the_loaded_image(tmp_path: Path) -> None:
    for name, size, mode in [("a.png", (640, 480), "crop"), ("b.png", (300, 600), "pad")]:
        path = write_png(tmp_path, name, *size)
        plan = read_preprocessing(path, mode, 196)
        images, boxes = load_images_and_boxes([path], mode, 196)
        assert images.shape[-2:] == plan.shape
        assert boxes == [plan.box]


def test_boxes_locate_each_frames_content(tmp_path: Path) -> None:
    landscape = write_png(tmp_path, "a.png", 640, 480)
    portrait = write_png(tmp_path, "b.png", 300, 600)
    with pytest.warns(UserWarning, match="different shapes"):
        images, boxes = load_images_and_boxes([landscape, portrait], mode="crop")
    assert boxes == [ContentBox(63, 0, 392, 518), ContentBox(0, 0, 518, 518)]
    _, pad_boxes = load_images_and_boxes([portrait], mode="pad")
    # new_w = round(300 * (518 / 600) / 14) * 14 = 252, centred: 133 columns each side.
    assert pad_boxes == [ContentBox(0, 133, 518, 252)]
    for image, box in zip(images, boxes, strict=True):
        inside = image[:, box.top : box.top + box.height, box.left : box.left + box.width]
        assert torch.all(inside == 0.0)
        assert float(image.sum()) == image.numel() - inside.numel()


def test_padded_shape_pads_without_warning_and_refuses_too_small(tmp_path: Path) -> None:
    path = write_png(tmp_path, "a.png", 640, 480)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, boxes = load_images_and_boxes([path], padded_shape=(518, 532))
    assert images.shape == (1, 3, 518, 532)
    assert boxes == [ContentBox(63, 7, 392, 518)]
    with pytest.raises(ValueError, match="do not fit padded_shape"):
        load_images_and_boxes([path], padded_shape=(378, 518))

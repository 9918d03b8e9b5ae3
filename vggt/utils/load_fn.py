"""Image loading and resizing into the model's (N, 3, H, W) [0, 1] input format."""

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

TARGET_SIZE = 518
PATCH_SIZE = 14
WHITE = 1.0

PathLike = str | os.PathLike[str]


def _open_rgb(path: PathLike) -> Image.Image:
    """Open an image, composite RGBA onto opaque white, and return it as RGB."""
    with Image.open(path) as img:
        if img.mode == "RGBA":
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        return img.convert("RGB")


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """Convert an RGB PIL image to a float32 (3, H, W) tensor with values in [0, 1]."""
    array = np.asarray(img, dtype=np.uint8)
    chw = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
    return chw.to(dtype=torch.float32).div(255)


def _pad_centered(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad a (3, h, w) tensor with white to (3, height, width), centring the content."""
    pad_h = height - img.shape[1]
    pad_w = width - img.shape[2]
    if pad_h <= 0 and pad_w <= 0:
        return img
    top = pad_h // 2
    left = pad_w // 2
    return F.pad(img, (left, pad_w - left, top, pad_h - top), mode="constant", value=WHITE)


def _check_paths(image_path_list: Sequence[PathLike]) -> None:
    if len(image_path_list) == 0:
        raise ValueError("image_path_list is empty: at least one image is required")


def load_and_preprocess_images(
    image_path_list: Sequence[PathLike], mode: str = "crop"
) -> torch.Tensor:
    """Load images resized to width 518 ("crop") or fitted into 518x518 ("pad").

    Returns a float32 (N, 3, H, W) tensor in [0, 1] with H and W multiples of 14.
    """
    _check_paths(image_path_list)
    if mode not in ("crop", "pad"):
        raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")

    images = []
    for path in image_path_list:
        img = _open_rgb(path)
        width, height = img.size
        if mode == "pad" and width < height:
            new_h = TARGET_SIZE
            new_w = round(width * (TARGET_SIZE / height) / PATCH_SIZE) * PATCH_SIZE
        else:
            new_w = TARGET_SIZE
            new_h = round(height * (TARGET_SIZE / width) / PATCH_SIZE) * PATCH_SIZE
        tensor = _to_tensor(img.resize((new_w, new_h), Image.Resampling.BICUBIC))
        if mode == "crop" and new_h > TARGET_SIZE:
            start_y = (new_h - TARGET_SIZE) // 2
            tensor = tensor[:, start_y : start_y + TARGET_SIZE, :]
        if mode == "pad":
            tensor = _pad_centered(tensor, TARGET_SIZE, TARGET_SIZE)
        images.append(tensor)

    shapes = {tuple(img.shape) for img in images}
    if len(shapes) > 1:
        max_h = max(shape[1] for shape in shapes)
        max_w = max(shape[2] for shape in shapes)
        warnings.warn(
            f"Images have different shapes {sorted(shapes)}; padding all to ({max_h}, {max_w})",
            stacklevel=2,
        )
        images = [_pad_centered(img, max_h, max_w) for img in images]
    return torch.stack(images)


def load_and_preprocess_images_square(
    image_path_list: Sequence[PathLike], target_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad each image to a black square, resize to ``target_size``, and record its placement.

    Returns images (N, 3, target, target) and float32 (N, 6) ``[x1, y1, x2, y2, w, h]`` holding
    the original image's box inside the resized square plus its original width and height.
    """
    _check_paths(image_path_list)
    images = []
    coords = []
    for path in image_path_list:
        img = _open_rgb(path)
        width, height = img.size
        max_dim = max(width, height)
        left = (max_dim - width) // 2
        top = (max_dim - height) // 2
        scale = target_size / max_dim
        coords.append(
            [
                left * scale,
                top * scale,
                (left + width) * scale,
                (top + height) * scale,
                width,
                height,
            ]
        )
        square = Image.new("RGB", (max_dim, max_dim), (0, 0, 0))
        square.paste(img, (left, top))
        square = square.resize((target_size, target_size), Image.Resampling.BICUBIC)
        images.append(_to_tensor(square))
    return torch.stack(images), torch.from_numpy(np.array(coords)).float()

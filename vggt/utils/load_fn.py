"""Image loading and resizing into the model's (N, 3, H, W) [0, 1] input format."""

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

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


def _check_mode(mode: str) -> None:
    if mode not in ("crop", "pad"):
        raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")


@dataclass(frozen=True)
class ContentBox:
    """Where a frame's own pixels lie in its preprocessed (padded) image: rows
    [top, top + height) and columns [left, left + width)."""

    top: int
    left: int
    height: int
    width: int

    def shifted(self, top: int, left: int) -> "ContentBox":
        """The same box moved down by `top` rows and right by `left` columns."""
        return ContentBox(self.top + top, self.left + left, self.height, self.width)


@dataclass(frozen=True)
class Preprocessing:
    """What one image becomes: resized to `resized` (W, H), cropped or padded to `shape`
    (H, W) with its pixels at `box`."""

    resized: tuple[int, int]
    shape: tuple[int, int]
    box: ContentBox


def plan_preprocessing(
    width: int, height: int, mode: str = "crop", target_size: int = TARGET_SIZE
) -> Preprocessing:
    """How an image of width x height is resized, cropped ("crop": width `target_size`,
    height at most that) or padded ("pad": fitted into a white `target_size` square)."""
    _check_mode(mode)
    if mode == "pad" and width < height:
        new_h = target_size
        new_w = round(width * (target_size / height) / PATCH_SIZE) * PATCH_SIZE
    else:
        new_w = target_size
        new_h = round(height * (target_size / width) / PATCH_SIZE) * PATCH_SIZE
    if mode == "pad":
        top, left = (target_size - new_h) // 2, (target_size - new_w) // 2
        box = ContentBox(top, left, new_h, new_w)
        return Preprocessing((new_w, new_h), (target_size, target_size), box)
    kept_h = min(new_h, target_size)
    return Preprocessing((new_w, new_h), (kept_h, new_w), ContentBox(0, 0, kept_h, new_w))


def read_preprocessing(
    path: PathLike, mode: str = "crop", target_size: int = TARGET_SIZE
) -> Preprocessing:
    """`plan_preprocessing` of the image at `path`, from its header only (no pixels decoded)."""
    with Image.open(path) as img:
        width, height = img.size
    return plan_preprocessing(width, height, mode, target_size)


def _preprocess(path: PathLike, plan: Preprocessing) -> torch.Tensor:
    """The image at `path` resized and cropped or padded as `plan` says: (3, H, W)."""
    tensor = _to_tensor(_open_rgb(path).resize(plan.resized, Image.Resampling.BICUBIC))
    new_h = plan.resized[1]
    height, width = plan.shape
    if new_h > height:
        start_y = (new_h - height) // 2
        tensor = tensor[:, start_y : start_y + height, :]
    return _pad_centered(tensor, height, width)


def padding_offsets(shape: tuple[int, int], padded: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of an image of `shape` centred in `padded` by the loaders' white padding."""
    return (padded[0] - shape[0]) // 2, (padded[1] - shape[1]) // 2


def load_images_and_boxes(
    image_path_list: Sequence[PathLike],
    mode: str = "crop",
    target_size: int = TARGET_SIZE,
    padded_shape: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, list[ContentBox]]:
    """`load_and_preprocess_images`, plus each frame's content box in the returned images.

    `padded_shape` (H, W) pads every image to that shape (at least each one's own), e.g. the
    largest over a sequence of which these are a part; by default, differing shapes are
    padded to the largest among them with a warning.
    """
    _check_paths(image_path_list)
    _check_mode(mode)
    plans = [read_preprocessing(path, mode, target_size) for path in image_path_list]
    shapes = sorted({plan.shape for plan in plans})
    if padded_shape is None:
        padded_shape = (max(s[0] for s in shapes), max(s[1] for s in shapes))
        if len(shapes) > 1:
            warnings.warn(
                f"Images have different shapes {[(3, *s) for s in shapes]}; padding all to "
                f"{padded_shape}",
                stacklevel=3,
            )
    too_large = [s for s in shapes if s[0] > padded_shape[0] or s[1] > padded_shape[1]]
    if too_large:
        raise ValueError(f"images of shape {too_large} do not fit padded_shape {padded_shape}")
    images, boxes = [], []
    for path, plan in zip(image_path_list, plans, strict=True):
        images.append(_pad_centered(_preprocess(path, plan), *padded_shape))
        boxes.append(plan.box.shifted(*padding_offsets(plan.shape, padded_shape)))
    return torch.stack(images), boxes


def load_and_preprocess_images(
    image_path_list: Sequence[PathLike], mode: str = "crop", target_size: int = TARGET_SIZE
) -> torch.Tensor:
    """Load images resized to width `target_size` ("crop", the height centre-cropped to at
    most that) or fitted into a white `target_size` square ("pad"); differing shapes are
    padded with white to the largest, with a warning.

    Returns a float32 (N, 3, H, W) tensor in [0, 1] with H and W multiples of 14 (for a
    `target_size` that is one).
    """
    images, _ = load_images_and_boxes(image_path_list, mode, target_size)
    return images


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

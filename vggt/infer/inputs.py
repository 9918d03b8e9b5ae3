"""The run's inputs from the command line: image paths in frame order, their preprocessing
read from headers, each rank's own frames loaded, and the query points."""

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vggt.infer.errors import InputError
from vggt.utils.load_fn import (
    ContentBox,
    Preprocessing,
    load_images_and_boxes,
    padding_offsets,
    read_preprocessing,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
GLOB_CHARACTERS = re.compile(r"[*?\[]")
IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def is_image(path: Path) -> bool:
    """A file whose suffix is an image suffix (any case)."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def find_images(arguments: Sequence[str]) -> list[Path]:
    """The image files that folders, globs and files name, once each, sorted by name (then by
    path); InputError for a path that does not exist or when no image is found."""
    found: dict[Path, Path] = {}
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            candidates = [child for child in path.iterdir() if is_image(child)]
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{argument} is not an image ({', '.join(IMAGE_SUFFIXES)})")
            candidates = [path]
        elif GLOB_CHARACTERS.search(argument):
            candidates = [Path(match) for match in glob.glob(argument) if is_image(Path(match))]
        else:
            raise InputError(f"no such image, folder or glob match: {argument}")
        for candidate in candidates:
            found.setdefault(candidate.resolve(), candidate)
    if not found:
        raise InputError(
            f"no images found in {' '.join(arguments)} (suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    return sorted(found.values(), key=lambda path: (path.name, str(path)))


def read_plans(paths: Sequence[Path], mode: str, size: int) -> list[Preprocessing]:
    """Every image's preprocessing from its header; InputError naming an unreadable image."""
    plans = []
    for path in paths:
        try:
            plans.append(read_preprocessing(path, mode, size))
        except IMAGE_ERRORS as error:
            raise InputError(f"cannot read image {path}: {error}") from None
    return plans


def padded_shape(plans: Sequence[Preprocessing]) -> tuple[int, int]:
    """(H, W) every frame is padded to: the largest height and width among them."""
    return max(plan.shape[0] for plan in plans), max(plan.shape[1] for plan in plans)


def content_boxes(plans: Sequence[Preprocessing]) -> list[ContentBox]:
    """Each frame's content box in the padded images."""
    shape = padded_shape(plans)
    return [plan.box.shifted(*padding_offsets(plan.shape, shape)) for plan in plans]


def load_frames(
    paths: Sequence[Path], mode: str, size: int, shape: tuple[int, int]
) -> torch.Tensor:
    """The images at `paths` preprocessed and padded to `shape`: [n, 3, H, W]; InputError
    naming an image that does not decode."""
    frames = []
    for path in paths:
        try:
            images, _ = load_images_and_boxes([path], mode, size, padded_shape=shape)
        except IMAGE_ERRORS as error:
            raise InputError(f"cannot read image {path}: {error}") from None
        frames.append(images[0])
    return torch.stack(frames)


def read_query_points(path: str) -> np.ndarray:
    """[N, 2] float32 pixel (x, y) from .npy, or .txt / .csv with one point a line (numbers
    separated by commas or spaces, `#` comments); InputError when malformed."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"no query points file at {path}")
    suffix = file.suffix.lower()
    try:
        if suffix == ".npy":
            points = np.load(file, allow_pickle=False)
        elif suffix in (".txt", ".csv"):
            points = np.array(_number_rows(file.read_text()), dtype=np.float64)
        else:
            raise ValueError(f"unknown suffix {suffix!r} (use .npy, .txt or .csv)")
        points = np.asarray(points, dtype=np.float64)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise InputError(f"query points {path}: {error}") from None
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise InputError(f"query points {path} must be [N, 2] with N >= 1, got {points.shape}")
    if not np.isfinite(points).all():
        raise InputError(f"query points {path} hold values that are not finite numbers")
    return points.astype(np.float32)


def _number_rows(text: str) -> list[list[float]]:
    """The numbers of each non-empty line (after removing `#` comments)."""
    rows = []
    for line in text.splitlines():
        fields = [f for f in re.split(r"[,\s]+", line.split("#", 1)[0].strip()) if f]
        if fields:
            rows.append([float(field) for field in fields])
    if len({len(row) for row in rows}) > 1:
        raise ValueError("lines hold different numbers of values")
    return rows


def check_points_inside(points: np.ndarray, box: ContentBox) -> None:
    """InputError unless every point lies inside the first frame (its own width and height)."""
    outside = (
        (points[:, 0] < 0)
        | (points[:, 0] >= box.width)
        | (points[:, 1] < 0)
        | (points[:, 1] >= box.height)
    )
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        x, y = points[index]
        raise InputError(
            f"query point {index} ({x:g}, {y:g}) lies outside the first frame, "
            f"{box.width}x{box.height} after preprocessing"
        )


def prepare_output_folder(out: str) -> Path:
    """The output folder, created when missing; InputError when it cannot be created or
    written, so that no finished forward is lost to an unwritable folder."""
    folder = Path(out).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create output folder {out}: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to output folder {out}")
    return folder

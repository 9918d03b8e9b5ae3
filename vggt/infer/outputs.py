"""The run's files: one npz per frame, the cameras, the tracks and run.json, each written
under a temporary name in its folder and renamed, so a file that exists is complete.

Predictions are cropped from the padded input back to each frame's content box: arrays are
the frame's own height and width, and pixel coordinates (intrinsics, tracks) count from the
top-left corner of its content.
"""

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch

from vggt.utils.load_fn import ContentBox
from vggt.utils.pose_enc import pose_encoding_to_extri_intri

FRAMES_FOLDER = "frames"
CAMERAS_FILE = "cameras.npz"
TRACKS_FILE = "tracks.npz"
RUN_FILE = "run.json"


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a temporary file next to `path`, then rename it to `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """`arrays` in an (uncompressed) npz at `path`, atomically."""
    write_atomically(path, lambda file: np.savez(file, **arrays))


def write_json(path: Path, document: dict) -> None:
    """`document` as indented JSON at `path`, atomically."""
    text = json.dumps(document, indent=2) + "\n"
    write_atomically(path, lambda file: file.write(text.encode()))


def frame_path(out: Path, index: int) -> Path:
    """The npz of global frame `index`."""
    return out / FRAMES_FOLDER / f"{index:06d}.npz"


def _crop(values: torch.Tensor, box: ContentBox) -> np.ndarray:
    """[H, W, ...] values cut to `box`, as float32 numpy."""
    rows = slice(box.top, box.top + box.height)
    columns = slice(box.left, box.left + box.width)
    return values[rows, columns].float().cpu().numpy()


def write_frames(
    out: Path, predictions: dict, first_index: int, boxes: Sequence[ContentBox]
) -> None:
    """One npz per frame of this rank's predictions (batch 1): depth, depth_conf [H, W],
    world_points [H, W, 3] and world_points_conf [H, W], cut to the frame's box.
    `first_index` is the global index of the rank's first frame; `boxes` are every frame's."""
    (out / FRAMES_FOLDER).mkdir(parents=True, exist_ok=True)
    frames = predictions["depth"].shape[1]
    for local in range(frames):
        index = first_index + local
        box = boxes[index]
        arrays = {
            "depth": _crop(predictions["depth"][0, local, ..., 0], box),
            "depth_conf": _crop(predictions["depth_conf"][0, local], box),
            "world_points": _crop(predictions["world_points"][0, local], box),
            "world_points_conf": _crop(predictions["world_points_conf"][0, local], box),
        }
        write_npz(frame_path(out, index), arrays)


def camera_arrays(
    pose_enc: torch.Tensor, shape: tuple[int, int], boxes: Sequence[ContentBox]
) -> dict[str, np.ndarray]:
    """pose_enc [S, 9] as the model predicts it for the padded H x W input, extrinsic
    [S, 3, 4] (camera from world) and intrinsic [S, 3, 3] in each frame's own pixels."""
    pose_enc = pose_enc.float().cpu()
    extrinsic, intrinsic = pose_encoding_to_extri_intri(pose_enc[None], image_size_hw=shape)
    intrinsic = intrinsic[0].clone()
    intrinsic[:, 0, 2] -= torch.tensor([box.left for box in boxes], dtype=torch.float32)
    intrinsic[:, 1, 2] -= torch.tensor([box.top for box in boxes], dtype=torch.float32)
    return {
        "pose_enc": pose_enc.numpy(),
        "extrinsic": extrinsic[0].numpy(),
        "intrinsic": intrinsic.numpy(),
    }


def track_arrays(
    track: torch.Tensor,
    vis: torch.Tensor,
    conf: torch.Tensor | None,
    boxes: Sequence[ContentBox],
) -> dict[str, np.ndarray]:
    """track [S, N, 2] in each frame's own pixels, vis [S, N] and conf [S, N] (when the
    tracker predicts it) from the model's [S, N, ...] outputs on the padded input."""
    offsets = torch.tensor([[box.left, box.top] for box in boxes], dtype=torch.float32)
    arrays = {
        "track": (track.float().cpu() - offsets[:, None, :]).numpy(),
        "vis": vis.float().cpu().numpy(),
    }
    if conf is not None:
        arrays["conf"] = conf.float().cpu().numpy()
    return arrays


def write_cameras(out: Path, arrays: dict[str, np.ndarray]) -> None:
    """cameras.npz."""
    write_npz(out / CAMERAS_FILE, arrays)


def write_tracks(out: Path, arrays: dict[str, np.ndarray]) -> None:
    """tracks.npz."""
    write_npz(out / TRACKS_FILE, arrays)


def write_run(out: Path, document: dict) -> None:
    """run.json."""
    write_json(out / RUN_FILE, document)

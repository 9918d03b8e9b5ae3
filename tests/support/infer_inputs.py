"""Inputs the `vggt.infer` tests write (a small checkpoint folder, a few tiny images of two
sizes, query points) and the runs of the command line on N ranks."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.support.configs import SMALL_VGGT
from tests.support.launch import torchrun
from tests.support.repo import REPO
from vggt.models.vggt_vram_optimized import VGGTOptimized

# Four frames in sorted name order: 80x60 ones become 140x112 at --size 140 (padded to
# 140x140 in the sequence), 70x70 ones 140x140; the tracker needs at least 128 rows.
IMAGE_SIZES = {"a.png": (80, 60), "b.JPG": (70, 70), "c.png": (80, 60), "d.webp": (70, 70)}
CONTENT_SHAPES = [(112, 140), (140, 140), (112, 140), (140, 140)]
SIZE = "140"
FIELD_OF_VIEW_STEP = 0.3
QUERY_POINTS = [[10.0, 20.0], [100.5, 60.0], [3.0, 100.0]]
FAULT_WORKER = Path(__file__).resolve().parent / "infer_fault_worker.py"


def write_checkpoint(folder: Path) -> Path:
    """A seeded SMALL_VGGT saved with save_pretrained (config.json + model.safetensors).

    Its camera head's last bias moves each of the 4 iterations' fields of view by 0.3 rad: a
    random head predicts some near 0, whose focal lengths (1 / tan) amplify any rounding.
    """
    torch.manual_seed(0)
    model = VGGTOptimized(**SMALL_VGGT)
    with torch.no_grad():
        model.camera_head.pose_branch.fc2.bias[7:] += FIELD_OF_VIEW_STEP
    model.save_pretrained(folder)
    return folder


def write_images(folder: Path) -> Path:
    """IMAGE_SIZES as random-pixel images in `folder` (plus a file that is no image)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (width, height) in IMAGE_SIZES.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(
            folder / name, **({"lossless": True} if "webp" in name else {})
        )
    (folder / "notes.txt").write_text("not an image")
    return folder


def write_query_points(path: Path) -> Path:
    """QUERY_POINTS as a CSV file."""
    np.savetxt(path, np.array(QUERY_POINTS), delimiter=",")
    return path


def write_inputs(root: Path) -> dict[str, Path]:
    """Everything a `vggt.infer` test runs on, written under `root`: the checkpoint folder,
    the images, the query points, and `root` itself for outputs."""
    return {
        "checkpoint": write_checkpoint(root / "checkpoint"),
        "images": write_images(root / "images"),
        "points": write_query_points(root / "points.csv"),
        "root": root,
    }


def environment() -> dict[str, str]:
    """The tests' environment for subprocesses: this checkout first, no hub access."""
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_infer(ranks: int, arguments: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """`python -m vggt.infer ARGUMENTS` from the repository root, under torchrun for more than
    one rank; the output is captured as text."""
    if ranks > 1:
        return torchrun(
            ranks, "vggt.infer", arguments, module=True, env=environment(), timeout_s=timeout_s
        )
    return subprocess.run(
        [sys.executable, "-m", "vggt.infer", *arguments],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )

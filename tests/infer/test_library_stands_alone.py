"""The library needs none of the tools: `vggt/` copied alone into an empty folder runs
`python -m vggt.infer --help` and a memory estimate (`--dry-run`) with `profiling` unimportable."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.configs import SMALL_VGGT
from tests.support.repo import REPO

# Runs a module with every import of the profiling tools failing, from the current folder.
RUNNER = (
    "import runpy, sys; sys.modules['profiling'] = None; import vggt.infer; "
    "assert vggt.infer.__file__.startswith(sys.argv[1]), vggt.infer.__file__; "
    "sys.argv = ['vggt.infer', *sys.argv[2:]]; runpy.run_module('vggt.infer', run_name='__main__')"
)


def run_alone(folder: Path, *arguments: str) -> subprocess.CompletedProcess:
    """`python -m vggt.infer ARGUMENTS` in `folder`, which holds a copy of vggt/ alone."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-c", RUNNER, str(folder), *arguments]
    return subprocess.run(
        command, cwd=folder, env=environment, capture_output=True, text=True, timeout=300
    )


def test_vggt_alone_runs_the_inference_help_and_a_dry_run(tmp_path: Path) -> None:
    shutil.copytree(REPO / "vggt", tmp_path / "vggt", ignore=shutil.ignore_patterns("__pycache__"))
    Image.fromarray(np.full((56, 56, 3), 128, dtype=np.uint8)).save(tmp_path / "frame.png")
    (tmp_path / "small.json").write_text(json.dumps(SMALL_VGGT))
    helped = run_alone(tmp_path, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--dry-run" in helped.stdout and "--precision" in helped.stdout
    planned = run_alone(
        tmp_path, "frame.png", "--out", "out", "--size", "56", "--config", "small.json",
        "--dry-run", "--json", "--device", "cpu",
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    document = json.loads(planned.stdout)
    assert document["frames"] == 1 and document["per_rank_bytes"] > 0
    assert not (tmp_path / "out").exists()

"""The repository's files the tests read: its root, the sweep's script, and tests/data with
the VGGT-1B state-dict manifest."""

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "profiling" / "run.py"
DATA = REPO / "tests" / "data"


def manifest() -> dict[str, list[int]]:
    """Name -> shape of every entry of the published VGGT-1B state dict, in order."""
    return json.loads((DATA / "vggt1b_state_dict.json").read_text())["state_dict"]

"""CUDA allocator history: recording it around a run and saving snapshots for memory_viz."""

import contextlib
import inspect
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# Allocator events kept per recorded run (each holds a Python stack of a few KB).
HISTORY_MAX_ENTRIES = 100_000


@contextlib.contextmanager
def recording_history(enabled: bool) -> Iterator[None]:
    """Record every allocation and free (with Python stacks) while the block runs."""
    if not enabled:
        yield
        return
    options: dict[str, Any] = {
        "context": "all",
        "stacks": "python",
        "max_entries": HISTORY_MAX_ENTRIES,
    }
    if "clear_history" in inspect.signature(torch.cuda.memory._record_memory_history).parameters:
        options["clear_history"] = True
    torch.cuda.memory._record_memory_history("all", **options)
    try:
        yield
    finally:
        torch.cuda.memory._record_memory_history(None)


def take_snapshot() -> dict[str, Any]:
    """The allocator's segments and trace now, as pytorch.org/memory_viz reads them."""
    return torch.cuda.memory._snapshot()


def save_snapshot(snapshot: dict[str, Any], path: Path) -> None:
    """Pickle `snapshot` to `path` (drag the file onto pytorch.org/memory_viz)."""
    with path.open("wb") as file:
        pickle.dump(snapshot, file)

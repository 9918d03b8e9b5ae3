"""What rank 0 tells the user: memory figures, the memory check's lines and the summary."""

import resource
import sys
from collections.abc import Sequence

import torch

GIB = 1 << 30


def gib(nbytes: float) -> str:
    """Bytes as GiB with two decimals."""
    return f"{nbytes / GIB:.2f}"


def peak_memory(device: torch.device) -> int:
    """This rank's peak so far: CUDA memory allocated on `device`, or the process's peak
    resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kilobytes if sys.platform == "darwin" else kilobytes * 1024


def peak_memory_kind(device: torch.device) -> str:
    """What `peak_memory` measures on `device`."""
    return "CUDA max_memory_allocated" if device.type == "cuda" else "CPU peak RSS"


def summary_line(
    frames: int, peaks: Sequence[int], device: torch.device, seconds: float, out: str
) -> str:
    """One line: frames, ranks, each rank's peak memory and the time."""
    memory = ", ".join(gib(peak) for peak in peaks)
    ranks = f"{len(peaks)} rank" + ("s" if len(peaks) > 1 else "")
    return (
        f"vggt.infer: {frames} frames on {ranks} in {seconds:.1f} s; peak memory per rank "
        f"({peak_memory_kind(device)}): {memory} GiB; outputs in {out}"
    )


def info(line: str) -> None:
    """A line for the user on stderr (stdout stays free for other tools)."""
    print(f"vggt.infer: {line}", file=sys.stderr, flush=True)

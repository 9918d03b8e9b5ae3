"""When ranks fail: one clear line from every rank instead of a hang or only a traceback.

A rank that dies mid-forward leaves the others in a collective. torchrun then stops them
with SIGTERM, and gloo collectives with a dead peer raise; both end here in one line and a
non-zero exit status, at once (no waiting for a process group to shut down).
"""

import os
import signal
import sys
from types import FrameType

import torch.distributed as dist

EXIT_STOPPED = 1
# Words of the errors collectives raise when a peer is gone or late (gloo, NCCL, the store).
PEER_FAILURE_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket")


def stop_now(line: str) -> None:
    """Print `line` on stderr and end the process at once with EXIT_STOPPED."""
    sys.stdout.flush()
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    os._exit(EXIT_STOPPED)


def install_stop_handler(rank: int) -> None:
    """On SIGTERM (torchrun stopping the ranks after one failed), one line and exit."""

    def stop(signum: int, frame: FrameType | None) -> None:
        stop_now(f"vggt.infer: rank {rank} stopped: another rank failed or the run was interrupted")

    signal.signal(signal.SIGTERM, stop)


def is_peer_failure(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another rank is gone or late."""
    if isinstance(error, dist.DistError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and any(w in message for w in PEER_FAILURE_WORDS)


def describe_peer_failure(rank: int, error: BaseException) -> str:
    """One line for a failed collective: who stopped and the error's first line."""
    first_line = next((line for line in str(error).splitlines() if line.strip()), repr(error))
    return (
        f"vggt.infer: rank {rank} stopped: another rank failed or did not answer in time "
        f"({type(error).__name__}: {first_line.strip()[:300]})"
    )

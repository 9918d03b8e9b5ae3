"""When ranks fail: one line from every rank naming the rank that failed, never a hang.

A rank that raises writes its error to the process group's store before it exits. Every
rank runs a watch thread: SIGTERM is blocked in all other threads and taken there, so torchrun
stopping the run is handled even while the main thread waits inside a CUDA or NCCL call; it
beats a counter in the store and reads the others'; it ends the rank with one line when
torchrun stops it, when another rank reported an error, or when another rank's counter has
not moved for half of `--timeout` (a rank stopped or hung, which no collective error names).
A collective that raises because a peer is gone (a `CollectiveError`, or a `DistError` of the
rendezvous) ends the same way, naming the peer when the store knows it; any other error is
this rank's own, and it is also written where torchrun's error summary reads it.
"""

import os
import signal
import sys
import threading
import time

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

from vggt.parallel.group import CollectiveError, message_line

EXIT_STOPPED = 1
# Where torchrun tells each rank to write the error that ended it.
ERROR_FILE_VARIABLE = "TORCHELASTIC_ERROR_FILE"
FAILED_KEY = "vggt.infer/failed"
BEAT_KEY = "vggt.infer/beat/{rank}"
DONE_KEY = "vggt.infer/done/{rank}"
# Seconds between heartbeats, at most.
BEAT_S = 1.0


def stop_now(line: str) -> None:
    """Print `line` on stderr and end the process at once with EXIT_STOPPED."""
    sys.stdout.flush()
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    os._exit(EXIT_STOPPED)


def is_peer_failure(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another rank is gone or late: told by
    its type alone (`collective` gives collectives' failures theirs)."""
    return isinstance(error, (CollectiveError, dist.DistError))


def record_for_torchrun(error: BaseException) -> None:
    """Write `error` to the file torchrun names in TORCHELASTIC_ERROR_FILE, so its summary of
    the failed run shows this rank's error as the root cause (nothing outside torchrun)."""
    if os.environ.get(ERROR_FILE_VARIABLE):
        ErrorHandler().record_exception(error)


def first_line(error: BaseException) -> str:
    """`Type: the error's first line` (at most 300 characters)."""
    line = message_line(error)
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


class Watch:
    """One rank's watch over a run of `world_size` ranks (see the module docstring): start it
    before any other thread, `attach` the store once the process group exists, `finish` when
    this rank is done, and hand `failed` any exception that ends it."""

    def __init__(self, rank: int, world_size: int, timeout_s: float) -> None:
        self.rank = rank
        self.world_size = world_size
        self.stale_s = timeout_s / 2
        self.store: dist.Store | None = None
        self._beats = 0
        self._seen: dict[int, tuple[int, float]] = {}
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        self._thread = threading.Thread(target=self._run, name="vggt.infer watch", daemon=True)
        self._thread.start()

    def attach(self, store: dist.Store) -> None:
        """Beat and read heartbeats through `store` from now on."""
        self.store = store

    def finish(self) -> None:
        """Tell the others this rank is done, so its silence from now on is not a hang."""
        if self.store is not None:
            self.store.set(DONE_KEY.format(rank=self.rank), "1")

    def failed(self, error: BaseException) -> None:
        """End this rank for `error`: a peer's failure is named as theirs, this rank's own is
        written to the store for the others, then one line either way."""
        if is_peer_failure(error):
            stop_now(self.stopped_line(f"({first_line(error)})"))
        record_for_torchrun(error)
        self._report(f"{self.rank}\t{first_line(error)}")
        stop_now(f"vggt.infer: rank {self.rank} failed: {first_line(error)}")

    def stopped_line(self, detail: str) -> str:
        """`rank k stopped: rank j failed (...)` when the store names the failed rank, else
        that another rank failed or did not answer, with `detail`."""
        reported = self._reported(wait_s=2 * BEAT_S)
        if reported is not None:
            failed, text = reported
            return f"vggt.infer: rank {self.rank} stopped: rank {failed} failed ({text})"
        return (
            f"vggt.infer: rank {self.rank} stopped: another rank failed or did not answer in "
            f"time {detail}"
        )

    def _report(self, text: str) -> None:
        """Write this rank's failure, unless another rank's is there first."""
        if self.store is None:
            return
        try:
            self.store.compare_set(FAILED_KEY, "", text)
        except Exception:
            return

    def _reported(self, wait_s: float = 0.0) -> tuple[int, str] | None:
        """(rank, error) of the first failure a rank wrote, waiting up to `wait_s` for one."""
        if self.store is None:
            return None
        deadline = time.monotonic() + wait_s
        while True:
            try:
                if self.store.check([FAILED_KEY]):
                    rank, text = self.store.get(FAILED_KEY).decode().split("\t", 1)
                    return int(rank), text
            except Exception:
                return None
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def _stale_rank(self) -> tuple[int, float] | None:
        """(rank, seconds) of a rank whose heartbeat has not moved for stale_s, not done."""
        now = time.monotonic()
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            beat, done = BEAT_KEY.format(rank=rank), DONE_KEY.format(rank=rank)
            if self.store.check([done]):
                continue
            count = int(self.store.get(beat)) if self.store.check([beat]) else 0
            last_count, since = self._seen.get(rank, (-1, now))
            if count != last_count:
                self._seen[rank] = (count, now)
            elif now - since > self.stale_s:
                return rank, now - since
        return None

    def _run(self) -> None:
        """The watch thread's loop."""
        while True:
            if signal.sigtimedwait({signal.SIGTERM}, BEAT_S) is not None:
                stop_now(self.stopped_line("(torchrun stopped the run)"))
            if self.store is None:
                continue
            try:
                self._beats += 1
                self.store.set(BEAT_KEY.format(rank=self.rank), str(self._beats))
                reported = self._reported()
                stale = self._stale_rank()
            except Exception:
                continue
            if reported is not None and reported[0] != self.rank:
                failed, text = reported
                stop_now(f"vggt.infer: rank {self.rank} stopped: rank {failed} failed ({text})")
            if stale is not None:
                rank, seconds = stale
                stop_now(
                    f"vggt.infer: rank {self.rank} stopped: rank {rank} has not answered for "
                    f"{seconds:.0f} s (stopped or hung)"
                )

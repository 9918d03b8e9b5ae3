"""A torchrun worker for the fault tests of `vggt.infer`: rank 1 fails right after its first
global attention block, in the middle of the forward, as VGGT_TEST_FAULT says: `kill`
(SIGKILL), `stop` (SIGSTOP: hung, alive) or `raise` (a RuntimeError); then `vggt.infer`'s
main() runs as usual on every rank.

    VGGT_TEST_FAULT=kill torchrun --nproc_per_node=2 tests/support/infer_fault_worker.py ...
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vggt.infer import main  # noqa: E402
from vggt.parallel.group import SimulatedGroup  # noqa: E402
from vggt.parallel.sequence import SequenceParallelBlocks  # noqa: E402

VICTIM_RANK = 1
# Words a peer's failure also has: the rank's own error must not pass for one by them.
INJECTED = "injected fault: nccl socket timed out"


# Run beside a stopped rank: resumes it once a SIGTERM waits for it (torchrun's shutdown after
# another rank failed), so the SIGTERM ends it at once instead of torchrun's SIGKILL 30 s later.
RESUME_ON_SIGTERM = """
import os, signal, sys, time
pid, term = int(sys.argv[1]), 1 << (signal.SIGTERM - 1)
for _ in range(3000):
    try:
        lines = open(f"/proc/{pid}/status").read().splitlines()
    except FileNotFoundError:
        break
    pending = [int(line.split()[1], 16) for line in lines if line[:7] in ("SigPnd:", "ShdPnd:")]
    if any(mask & term for mask in pending):
        os.kill(pid, signal.SIGCONT)
        break
    time.sleep(0.1)
"""


def fail(fault: str) -> None:
    """Fail this process as `fault` says."""
    if fault == "raise":
        raise RuntimeError(INJECTED)
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    subprocess.Popen([sys.executable, "-c", RESUME_ON_SIGTERM, str(os.getpid())])
    os.kill(os.getpid(), signal.SIGSTOP)


def fail_after_first_global_block(fault: str) -> None:
    """Patch the sequence-parallel block runner so that rank VICTIM_RANK fails after running
    its first global block (of the real forward: the memory check's fake pass simulates a
    rank too)."""
    run_block = SequenceParallelBlocks.__call__

    def run_then_fail(self, block, x, pos, across_frames=False):
        result = run_block(self, block, x, pos, across_frames)
        real = not isinstance(self.group, SimulatedGroup)
        if across_frames and real and self.group.rank == VICTIM_RANK:
            fail(fault)
        return result

    SequenceParallelBlocks.__call__ = run_then_fail


if __name__ == "__main__":
    fail_after_first_global_block(os.environ["VGGT_TEST_FAULT"])
    sys.exit(main())

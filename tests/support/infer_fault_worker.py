"""A torchrun worker for the fault tests of `vggt.infer`: rank 1 fails right after its first
global attention block, in the middle of the forward, as VGGT_TEST_FAULT says: `kill`
(SIGKILL), `stop` (SIGSTOP: hung, alive) or `raise` (a RuntimeError); then `vggt.infer`'s
main() runs as usual on every rank.

    VGGT_TEST_FAULT=kill torchrun --nproc_per_node=2 tests/support/infer_fault_worker.py ...
"""

import os
import signal
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


def fail(fault: str) -> None:
    """Fail this process as `fault` says."""
    if fault == "raise":
        raise RuntimeError(INJECTED)
    os.kill(os.getpid(), signal.SIGKILL if fault == "kill" else signal.SIGSTOP)


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

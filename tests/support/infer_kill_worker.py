"""A torchrun worker for the fault test of `vggt.infer`: rank 1 kills itself (SIGKILL) right
after its first global attention block, in the middle of the forward; then `vggt.infer`'s
main() runs as usual on every rank.

    torchrun --nproc_per_node=2 tests/support/infer_kill_worker.py IMAGES... --out DIR ...
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


def die_after_first_global_block() -> None:
    """Patch the sequence-parallel block runner so that rank VICTIM_RANK dies after running
    its first global block (of the real forward: the memory check's fake pass simulates a
    rank too)."""
    run_block = SequenceParallelBlocks.__call__

    def run_then_die(self, block, x, pos, across_frames=False):
        result = run_block(self, block, x, pos, across_frames)
        real = not isinstance(self.group, SimulatedGroup)
        if across_frames and real and self.group.rank == VICTIM_RANK:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    SequenceParallelBlocks.__call__ = run_then_die


if __name__ == "__main__":
    die_after_first_global_block()
    sys.exit(main())

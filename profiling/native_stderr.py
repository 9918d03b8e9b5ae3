"""Send what this process writes to its stderr file descriptor to a log file for a while.

C++ libraries write to file descriptor 2 directly: kineto prints `profiler_start` and
`profiler_stop` lines around every CPU profile (torch 2.13 logs them at its USDT level, which
KINETO_LOG_LEVEL could silence only together with kineto's errors, and only if set before the
first profile), so they would break a console's progress bars. Redirecting the descriptor keeps
them, and any other native message, in a file on every torch version.
"""

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

STDERR_FD = 2


@contextlib.contextmanager
def native_stderr_to(path: Path) -> Iterator[None]:
    """Append everything written to file descriptor 2 while the block runs (Python's
    sys.stderr included) to `path`; the console's stderr is back afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    console = os.dup(STDERR_FD)
    try:
        with path.open("ab") as log:
            os.dup2(log.fileno(), STDERR_FD)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(console, STDERR_FD)
    finally:
        os.close(console)

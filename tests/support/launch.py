"""The one way the tests start several ranks: torchrun (standalone) on a module or a script."""

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.repo import REPO


def torchrun(
    ranks: int,
    target: str | Path,
    arguments: Sequence[str] = (),
    *,
    timeout_s: float,
    module: bool = False,
    max_restarts: int = 0,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess:
    """Run script `target` (module `target` with module=True) on `ranks` local ranks in `cwd`,
    with `env` (this process's environment if None); the output is captured as text."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={ranks}", f"--max-restarts={max_restarts}"]
    command += ["-m", str(target)] if module else [str(target)]
    return subprocess.run(
        [*command, *arguments],
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )

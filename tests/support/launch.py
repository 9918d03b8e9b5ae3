"""The one way the tests start several ranks: torchrun on a module or a script, standalone or
as several agents meeting on 127.0.0.1 as if on several nodes."""

import socket
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_nodes(
    nodes: int,
    target: str,
    arguments: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwds: Sequence[Path] | None = None,
) -> list[subprocess.CompletedProcess]:
    """Module `target` on `nodes` torchrun agents of one rank each, as if on that many nodes:
    they meet by c10d rendezvous on 127.0.0.1 (the first agent hosts its store). Agent i
    runs in `cwds[i]` (default: every agent in the repository)."""
    endpoint = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}"]
    command += ["--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}"]
    command += [f"--rdzv-id=nodes-{endpoint}", "--max-restarts=0", "-m", target, *arguments]
    agents = [
        subprocess.Popen(
            command,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cwd in cwds or [REPO] * nodes
    ]
    finished = []
    try:
        for agent in agents:
            stdout, stderr = agent.communicate(timeout=timeout_s)
            finished.append(subprocess.CompletedProcess(command, agent.returncode, stdout, stderr))
    finally:
        for agent in agents:
            agent.kill()
    return finished

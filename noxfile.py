"""Developer sessions: `nox -s tests`, `gpu_tests`, `benchmark`, `profile`, `lint`.

Sessions reuse the interpreter's site packages, so a torch already installed there (the CPU
wheel on CI machines, a CUDA build on GPU machines) is used instead of a fresh download.
"""

import shutil

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
PYTHON = False if shutil.which("python3.11") is None else "3.11"


def install(session: nox.Session) -> None:
    session.install("-e", ".[test]")


@nox.session(venv_params=["--system-site-packages"])
def tests(session: nox.Session) -> None:
    """The CPU test suite (the README's test command runs this)."""
    install(session)
    session.run("pytest", *session.posargs)


@nox.session(venv_params=["--system-site-packages"])
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")

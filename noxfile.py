"""Developer sessions: `nox -s tests`, `gpu_tests`, `benchmark`, `profile`, `lint`.

They are defined here only; tox.ini's environments run them. Sessions reuse the interpreter's
site packages, so a torch already installed there (the CPU wheel on CI machines, a CUDA build on
GPU machines) is used instead of a fresh download.
"""

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
VENV_PARAMS = ["--system-site-packages"]
BENCHMARK_STORAGE = ".benchmarks"
BENCHMARK_REPORT = "reports/benchmarks"
COUNT_GPUS = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
ROOT = Path(__file__).resolve().parent
# Given pyproject.toml, prints "missing:" and the names of the project's and its test extras'
# requirements that are not installed.
MISSING_REQUIREMENTS = """
import importlib.metadata, re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
missing = []
for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
    name = re.match(r"[\\w.-]+", requirement).group()
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        missing.append(name)
print("missing:", *missing)
"""


def install(session: nox.Session) -> None:
    """Install the project in editable mode with its test extras."""
    session.install("-e", ".[test]")


def install_unless_present(session: nox.Session) -> None:
    """`install`, unless the session's interpreter already has every requirement (any version):
    then the checkout goes first on PYTHONPATH instead, and no package registry is needed."""
    pyproject = str(ROOT / "pyproject.toml")
    output = session.run("python", "-c", MISSING_REQUIREMENTS, pyproject, silent=True)
    if not output or output.splitlines()[-1] != "missing:":
        install(session)
        return
    session.log("every requirement is installed: the checkout runs from PYTHONPATH, uninstalled")
    session.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.getenv("PYTHONPATH")]))


def cuda_devices(session: nox.Session) -> int:
    """How many CUDA devices torch sees from inside the session's environment."""
    output = session.run("python", "-c", COUNT_GPUS, silent=True)
    return int(output.split()[-1]) if output else 0


def device_args(session: nox.Session) -> list[str]:
    """`--device cuda` where torch sees a GPU, else `--device cpu`; none if posargs name one."""
    if any(arg.startswith("--device") for arg in session.posargs):
        return []
    return ["--device", "cuda" if cuda_devices(session) else "cpu"]


@nox.session(venv_params=VENV_PARAMS)
def tests(session: nox.Session) -> None:
    """The CPU test suite (the README's test command runs this)."""
    install(session)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(venv_params=VENV_PARAMS)
def gpu_tests(session: nox.Session) -> None:
    """Every gpu-marked test (the CUDA profiling checks among them), then each benchmark once
    on CUDA. Where torch sees no CUDA device it runs nothing, says so and succeeds. Posargs go
    to the first run. Where the requirements are installed already it installs nothing and runs
    the checkout from PYTHONPATH, so it works offline (`install_unless_present`)."""
    if not cuda_devices(session):
        session.skip(
            "ran nothing: torch sees no CUDA device here (torch.cuda.is_available() is False), "
            "so no gpu test and no benchmark ran"
        )
    install_unless_present(session)
    session.run("python", "-m", "pytest", "-m", "gpu", "--device", "cuda", *session.posargs)
    session.run("python", "-m", "pytest", "tests/benchmarks", "--device", "cuda")


@nox.session(venv_params=VENV_PARAMS)
def benchmark(session: nox.Session) -> None:
    """Run and save the benchmarks (on CUDA where present), then compare with the last run."""
    install(session)
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/benchmarks",
        "--benchmark-enable",
        "--benchmark-autosave",
        f"--benchmark-storage={BENCHMARK_STORAGE}",
        *device_args(session),
        *session.posargs,
    )
    session.run(
        "python",
        "-m",
        "profiling.bench_report",
        "--storage",
        BENCHMARK_STORAGE,
        "--out",
        BENCHMARK_REPORT,
    )


@nox.session(venv_params=VENV_PARAMS)
def profile(session: nox.Session) -> None:
    """The torchrun sweep with the machine's default preset: one rank per GPU, else 2 on CPU."""
    install(session)
    ranks = cuda_devices(session) or 2
    session.run(
        "python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        "-m",
        "profiling.run",
        *session.posargs,
    )


@nox.session(venv_params=VENV_PARAMS)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("python", "-m", "ruff", "check", ".")
    session.run("python", "-m", "ruff", "format", "--check", ".")

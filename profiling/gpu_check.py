"""`python -m profiling.gpu_check --out DIR [--budget-s 420]`: the GPU evidence in one command
(profiling/evidence/: the plan, the checks, the estimates' workers, the report).

Hidden options for tests and smoke runs: `--dry-run` runs the same steps at tiny sizes, and
`--device cpu` runs them without CUDA. Without CUDA (and without `--device cpu`) it says so,
runs nothing and exits 0. Otherwise it exits 1 when a check failed or erred, else 0.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from profiling.evidence.checks import print_plan, run_evidence
from profiling.evidence.plan import dry_run_plan, gpu_plan
from profiling.evidence.report import SUMMARY_FILE
from profiling.evidence.results import ERROR, FAIL, Deadline

DEFAULT_BUDGET_S = 420.0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The options; two hidden ones for tests."""
    parser = argparse.ArgumentParser(
        prog="python -m profiling.gpu_check",
        description="Run the GPU evidence on one CUDA device (about 7 minutes on an H100 or "
        "H200): the gpu tests; full against optimized VGGT-1B aggregators at 1, 8, 100 and 200 "
        "frames of 518x518 in bf16 autocast and bf16 weights; the memory estimator against "
        "them; a memory cap; offload and token chunks on and off. Writes DIR/summary.md, "
        "DIR/results.json and plots.",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        metavar="S",
        help="seconds after which the remaining steps are skipped "
        f"(default {DEFAULT_BUDGET_S:.0f})",
    )
    parser.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evidence; see the module docstring for the exit codes."""
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "profiling.gpu_check: no CUDA device (torch.cuda.is_available() is False): the GPU "
            "evidence needs one, so nothing was run."
        )
        return 0
    if args.device == "cpu" and not args.dry_run:
        print("profiling.gpu_check: --device cpu runs the --dry-run sizes only")
        return EXIT_USAGE
    plan = dry_run_plan() if args.dry_run else gpu_plan()
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    deadline = Deadline(args.budget_s)
    print_plan(plan, device, args.budget_s)
    results = run_evidence(plan, device, args.out, deadline)
    print(f"summary: {args.out / SUMMARY_FILE} ({deadline.elapsed():.0f} s)")
    return EXIT_FAILED if any(step.status in (FAIL, ERROR) for step in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())

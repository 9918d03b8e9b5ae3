"""`python -m profiling.gpu_check --out DIR`: the GPU evidence in one command, planned to fit
its time budget (profiling/evidence/: the plan with its predicted seconds, the checks, the
estimates' workers, the report).

`--plan` prints each step's predicted seconds and the total without running anything (no GPU
needed; `--json` for a machine-readable form). Exit status: 0 when every planned check ran
and passed, 1 when a check failed or erred, 3 when a check was skipped for time or is
incomplete, or nothing could run (no CUDA device). `--adopt DIR` makes the rate a run measured
its GPU type's entry in the library's rates table (profiling/evidence/adopt.py; exit 1 when
refused). `--dry-run --device cpu` runs the same steps at tiny sizes on a CPU, as the tests do.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from profiling.evidence.adopt import NotAdopted, adopt
from profiling.evidence.checks import plan_lines, run_evidence
from profiling.evidence.plan import DEFAULT_BUDGET_S, Rates, dry_run_plan, gpu_plan
from profiling.evidence.report import SUMMARY_FILE
from profiling.evidence.results import EXIT_INCOMPLETE, Deadline, exit_status, unfinished
from vggt.memory.device_rates import RATES_PATH

EXIT_NOT_ADOPTED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The options."""
    parser = argparse.ArgumentParser(
        prog="python -m profiling.gpu_check",
        description="Run the GPU evidence on one CUDA device, within --budget-s seconds: the "
        "CUDA context and NCCL's buffers, the gpu tests, full against optimized VGGT-1B "
        "aggregators at VGGT's README frame counts and size (350x518), the memory estimator "
        "against them, a memory cap around the estimate, token chunks, offload, a training "
        "step of the whole full and optimized models (8 images of 518x518; each phase's peak "
        "against the estimator's), then 518x518 points as time allows. Writes "
        "DIR/summary.md, DIR/results.json and plots.",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        metavar="S",
        help=f"seconds the run may take (default {DEFAULT_BUDGET_S:.0f}); the plan is sized to "
        "fit them and a step or point predicted not to finish in the time left is skipped",
    )
    parser.add_argument(
        "--tflops",
        type=float,
        default=Rates().tflops,
        metavar="T",
        help="effective bf16 TFLOP/s of the GPU the plan's seconds are predicted for "
        f"(default {Rates().tflops:g}: the rates table's stated rate of an H100 or H200 under "
        "PyTorch's SDPA)",
    )
    parser.add_argument(
        "--plan", action="store_true", help="print the plan and its predicted seconds; run nothing"
    )
    parser.add_argument("--json", action="store_true", help="with --plan: print it as JSON")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes that run on a CPU in seconds (tests)"
    )
    parser.add_argument(
        "--adopt",
        type=Path,
        metavar="DIR",
        help="run nothing: make DIR/results.json's measured rate its GPU type's entry in the "
        "rates table (refused when a check failed or no rate was measured on a GPU)",
    )
    parser.add_argument(
        "--rates",
        type=Path,
        default=RATES_PATH,
        metavar="PATH",
        help="with --adopt: the rates table to write (default: the library's)",
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cuda (default), or cpu with --dry-run",
    )
    return parser


def adopt_rate(folder: Path, table: Path) -> int:
    """`--adopt DIR`: write the entry and say so, or say why not (EXIT_NOT_ADOPTED)."""
    try:
        rates = adopt(folder, table)
    except NotAdopted as reason:
        print(f"profiling.gpu_check: not adopted: {reason}", file=sys.stderr)
        return EXIT_NOT_ADOPTED
    print(
        f"{table}: {rates.gpu} now predicts at {rates.tflops:g} TFLOP/s, measured on "
        f"{rates.device} ({rates.report}, {rates.date})"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Plan or run the evidence; see the module docstring for the exit statuses."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tflops <= 0 or args.budget_s <= 0:
        parser.error("--tflops and --budget-s must be positive")
    if args.adopt is not None:
        return adopt_rate(args.adopt, args.rates)
    plan = dry_run_plan() if args.dry_run else gpu_plan(args.budget_s, Rates(tflops=args.tflops))
    if args.plan:
        if args.json:
            print(json.dumps(plan.plan_json(), indent=2))
        else:
            print(f"GPU evidence plan: {plan.model}")
            print("\n".join(plan_lines(plan, args.device, args.budget_s)))
        return 0
    if args.out is None:
        parser.error("--out DIR is required to run (or pass --plan)")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "profiling.gpu_check: no CUDA device (torch.cuda.is_available() is False): the GPU "
            "evidence needs one, so nothing was run (`--plan` shows what would run)."
        )
        return EXIT_INCOMPLETE
    if args.device == "cpu" and not args.dry_run:
        print("profiling.gpu_check: --device cpu runs the --dry-run sizes only")
        return EXIT_USAGE
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"GPU evidence on {device} ({name}): {plan.model}; budget {args.budget_s:.0f} s")
    print("\n".join(plan_lines(plan, device.type, args.budget_s)), flush=True)
    deadline = Deadline(args.budget_s)
    results = run_evidence(plan, device, args.out, deadline)
    status = exit_status(results)
    print(f"summary: {args.out / SUMMARY_FILE} ({deadline.elapsed():.0f} s)")
    if status:
        print(f"not passed: {', '.join(unfinished(results))} (exit status {status})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())

"""Entry point: `torchrun --nproc_per_node=N profiling/run.py [options]`, or plain `python`.

Parses the options, joins the process group, runs this rank's share of the sweep, and on
rank 0 writes the report. `--help` lists the options.
"""

import sys
from pathlib import Path

# Run as a script, Python puts profiling/ first on the path, where module names could shadow
# the standard library's; the repository root goes there instead so `import profiling` works.
REPO_ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO_ROOT)
elif str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from profiling import estimate  # noqa: E402
from profiling.report.results import write_report  # noqa: E402
from profiling.sweep import distributed  # noqa: E402
from profiling.sweep.options import REPORTS_DIR, UsageError, parse_config  # noqa: E402
from profiling.sweep.runner import run_sweep  # noqa: E402

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    """Run the sweep (or, with --estimate, the fake-tensor memory estimator); 2 for bad usage."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--estimate" in argv:
        return estimate.main([arg for arg in argv if arg != "--estimate"])
    try:
        config = parse_config(argv, distributed.restart_count())
    except UsageError as error:
        print(f"profiling/run.py: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    context = distributed.start(config.device_type)
    try:
        proposal = config.out_dir or distributed.default_out_dir(REPORTS_DIR)
        out_dir = distributed.agree_on_path(context.store, proposal)
        outcome = run_sweep(config, context, out_dir)
        if outcome is not None:
            records, environment = outcome
            write_report(out_dir, records, environment)
            print(f"report written to {out_dir}/ (summary.md, results.json, results.csv, plots/)")
    finally:
        distributed.stop(context)
    return 0


if __name__ == "__main__":
    sys.exit(main())

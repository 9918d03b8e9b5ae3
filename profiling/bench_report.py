"""`python -m profiling.bench_report`: the benchmark report of profiling/report/benchmarks.py."""

from profiling.report.benchmarks import main

if __name__ == "__main__":
    raise SystemExit(main())

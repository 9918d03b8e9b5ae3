"""`python -m profiling.gpu_check --out DIR`: the GPU evidence of profiling/evidence/."""

from profiling.evidence.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m profiling.estimate`: the command line of profiling/estimate/cli.py."""

from profiling.estimate.cli import main

raise SystemExit(main())

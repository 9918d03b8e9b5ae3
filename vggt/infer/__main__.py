"""`python -m vggt.infer` and `torchrun -m vggt.infer`: see vggt/infer/__init__.py."""

import sys

from vggt.infer.cli import main

sys.exit(main())

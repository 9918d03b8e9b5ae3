"""The command line for predictions on a sequence of images, split over the ranks of torchrun:

    torchrun --nproc_per_node=N -m vggt.infer IMAGES... --out DIR
    python -m vggt.infer IMAGES... --out DIR

`python -m vggt.infer --help` lists the options.
"""

from vggt.infer.cli import main

__all__ = ["main"]

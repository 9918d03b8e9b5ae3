"""pytest-benchmark comparisons of the full and VRAM-optimized aggregator and model."""

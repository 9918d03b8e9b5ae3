"""Profiling suite for the full and VRAM-optimized VGGT aggregators."""

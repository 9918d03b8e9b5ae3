"""A sweep: its options, case grid, variants and presets, and the ranks that measure it."""

"""Sequence parallelism: one sequence's frames split over the ranks of a process group, with
global attention exact over all frames (head-parallel all-to-all, or a ring of K/V blocks)."""

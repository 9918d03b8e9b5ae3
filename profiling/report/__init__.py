"""What a sweep and the benchmarks leave behind: results, summary.md, plots and timelines."""

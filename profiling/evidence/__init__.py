"""The GPU evidence, `python -m profiling.gpu_check --out DIR`: the gpu tests, full against
optimized at the VGGT README's sizes, the estimator against those measurements, a memory cap,
offload and chunking on and off; one summary, results.json and plots.

`plan` says what runs, `checks` runs it, `estimates` computes the estimator's figures in worker
processes, `results` holds the typed step data and `report` writes it out."""

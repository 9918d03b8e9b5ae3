"""Meters of one forward pass: memory on CPU, CUDA and through NVML, time, and its outputs."""

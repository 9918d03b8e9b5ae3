"""How much device memory a run needs, answered without a GPU: a forward pass on fake tensors
(`tracker`), a model of PyTorch's CUDA caching allocator (`allocator`), the estimate of one
pass (`estimate`: its requirement, `Estimate.required_bytes`) and the largest frame count that
fits a memory size (`fit`). Every command that asks "does it fit" (`python -m
profiling.estimate`, `vggt.infer`, `profiling.gpu_check`) asks these modules.
"""

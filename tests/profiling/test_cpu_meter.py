"""The CPU profiler meter: tensor bytes and kernel scratch told apart."""

import torch

from profiling.meters.cpu import peak_live_bytes, trace_cpu_memory


def test_an_operators_output_is_tensor_bytes() -> None:
    _, trace = trace_cpu_memory(lambda: torch.ones(1000))
    assert trace.tensor_peak_bytes == trace.end_bytes == 4000
    assert trace.scratch_peak_bytes == 0
    assert peak_live_bytes(lambda: torch.ones(1000)) == 4000


def test_a_kernels_internal_copy_is_scratch() -> None:
    # mm cannot hand a column-strided operand to BLAS: it copies it inside the kernel.
    left, right = torch.randn(256, 512), torch.randn(256, 256)
    result, trace = trace_cpu_memory(lambda: torch.mm(left[:, ::2].t(), right))
    output = result.numel() * result.element_size()
    assert trace.tensor_peak_bytes == trace.end_bytes == output
    assert trace.scratch_peak_bytes >= 256 * 256 * 4
    assert trace.peak_bytes >= output + 256 * 256 * 4


def test_freed_temporaries_leave_the_running_total() -> None:
    def program() -> torch.Tensor:
        temporary = torch.zeros(4096)
        return temporary.sum()

    _, trace = trace_cpu_memory(program)
    assert trace.tensor_peak_bytes >= 4096 * 4
    assert trace.end_bytes < 4096 * 4

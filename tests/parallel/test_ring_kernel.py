"""Ring attention's kernel: the one SDPA picks, its log-sum-exp, and partial results merged
into what one attention call over all keys gives."""

import pytest
import torch
import torch.nn.functional as F

from vggt.layers.attention_backends import (
    attention_with_log_sum,
    chosen_backend,
    math_attention_with_log_sum,
)
from vggt.parallel.ring import _merge_


def random_heads(device: torch.device, dtype: torch.dtype, keys: int = 96) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shapes = [(2, 4, 40, 32), (2, 4, keys, 32), (2, 4, keys, 32)]
    return [torch.randn(shape, generator=generator).to(device, dtype) for shape in shapes]


def merged_halves(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Attention over the keys' two halves, merged by their log-sum-exp as ring attention does."""
    half = key.shape[2] // 2
    output = torch.zeros(query.shape, dtype=torch.float32, device=query.device)
    log_sum = torch.full(query.shape[:3], float("-inf"), device=query.device)
    for part in (slice(None, half), slice(half, None)):
        out, part_log_sum = attention_with_log_sum(query, key[:, :, part], value[:, :, part])
        _merge_(output, log_sum, out, part_log_sum)
    return output


def test_the_cpu_kernel_and_the_math_fallback_agree() -> None:
    query, key, value = random_heads(torch.device("cpu"), torch.float32)
    assert chosen_backend(query, key, value) == "cpu"
    out, log_sum = attention_with_log_sum(query, key, value)
    math_out, math_log_sum = math_attention_with_log_sum(query, key, value)
    torch.testing.assert_close(out, math_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_sum, math_log_sum, rtol=1e-5, atol=1e-5)
    expected = F.scaled_dot_product_attention(query, key, value)
    torch.testing.assert_close(merged_halves(query, key, value), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_partial_attentions_merge_into_one_call(dtype: torch.dtype) -> None:
    query, key, value = random_heads(torch.device("cuda"), dtype, keys=256)
    backend = chosen_backend(query, key, value)
    assert backend in ("flash", "cudnn", "efficient"), backend
    expected = F.scaled_dot_product_attention(query, key, value).float()
    out, log_sum = attention_with_log_sum(query, key, value)
    assert log_sum.shape == query.shape[:3] and log_sum.dtype == torch.float32
    _, math_log_sum = math_attention_with_log_sum(query, key, value)
    torch.testing.assert_close(log_sum, math_log_sum, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(merged_halves(query, key, value), expected, rtol=2e-2, atol=2e-2)

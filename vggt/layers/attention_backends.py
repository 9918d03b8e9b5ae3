"""Which scaled-dot-product-attention kernel PyTorch runs for given inputs, and that kernel's
output with its per-row log-sum-exp of scores, which ring attention needs to merge partial
results. PyTorch picks the first backend of its priority order that is enabled and accepts the
inputs (recent releases put cuDNN first on sm90) and says nothing of it; `chosen_backend` asks
the same questions."""

from collections.abc import Callable

import torch

CPU = "cpu"
UNKNOWN = "unknown"
# SDPBackend values, by the names used here.
BACKEND_NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def backend_checks() -> dict[str, tuple[Callable[[], bool], Callable | None]]:
    """Backend name -> (whether it is enabled, whether it accepts an SDPAParams, or None)."""
    cuda = torch.backends.cuda
    return {
        "flash": (cuda.flash_sdp_enabled, cuda.can_use_flash_attention),
        "efficient": (cuda.mem_efficient_sdp_enabled, cuda.can_use_efficient_attention),
        "cudnn": (cuda.cudnn_sdp_enabled, getattr(cuda, "can_use_cudnn_attention", None)),
        "math": (cuda.math_sdp_enabled, None),
    }


def chosen_backend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> str:
    """The backend an SDPA call on these inputs (no mask, no dropout) runs: `cpu` off CUDA,
    `unknown` where this PyTorch does not expose the choice."""
    if query.device.type != "cuda":
        return CPU
    try:
        params = torch.backends.cuda.SDPAParams(query, key, value, None, 0.0, False, False)
        order = [BACKEND_NAMES.get(int(n), UNKNOWN) for n in torch._C._get_sdp_priority_order()]
        checks = backend_checks()
        for name in order:
            if name not in checks:
                continue
            enabled, accepts = checks[name]
            if enabled() and (accepts is None or accepts(params, False)):
                return name
    except (AttributeError, RuntimeError, TypeError):
        return UNKNOWN
    return UNKNOWN


def attention_with_log_sum(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of query [B, H, Nq, D] over key and value [B, H, Nk, D] by the kernel SDPA
    would pick, and each query row's log-sum-exp of scaled scores [B, H, Nq] in fp32."""
    rows = query.shape[2]
    backend = chosen_backend(query, key, value)
    if backend == CPU:
        out, log_sum = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value)
        return out, log_sum
    if backend == "flash":
        result = torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, 0.0, False)
        return result[0], result[1][..., :rows]
    if backend == "cudnn":
        result = torch.ops.aten._scaled_dot_product_cudnn_attention(
            query, key, value, None, True, 0.0, False, False
        )
        return result[0], result[1].reshape(*query.shape[:2], -1)[..., :rows].float()
    if backend == "efficient":
        result = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, None, True
        )
        return result[0], result[1][..., :rows]
    return math_attention_with_log_sum(query, key, value)


def math_attention_with_log_sum(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention_with_log_sum` in fp32 matrix products (all scores at once): where no fused
    kernel gives the log-sum-exp."""
    scores = (query.float() @ key.float().transpose(-2, -1)) * query.shape[-1] ** -0.5
    log_sum = scores.logsumexp(dim=-1)
    out = ((scores - log_sum.unsqueeze(-1)).exp_() @ value.float()).to(query.dtype)
    return out, log_sum

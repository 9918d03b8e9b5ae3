"""Which scaled-dot-product-attention kernel each call would run: PyTorch picks the first
backend of its priority order that is enabled and accepts the inputs (recent releases put
cuDNN first on sm90), and says nothing of it; this asks the same questions per call."""

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

CPU = "cpu"
UNKNOWN = "unknown"
# SDPBackend values, by the names the report uses.
BACKEND_NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def backend_checks() -> dict[str, tuple[Callable[[], bool], Callable | None]]:
    """Backend name -> (whether it is enabled, whether it accepts an SDPAParams or None)."""
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
        order = [BACKEND_NAMES.get(int(number), UNKNOWN) for number in priority_order()]
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


def priority_order() -> list[int]:
    """PyTorch's backend priority order (SDPBackend values)."""
    return list(torch._C._get_sdp_priority_order())


@contextlib.contextmanager
def counting_backends() -> Iterator[Counter]:
    """Count, per backend, the calls to F.scaled_dot_product_attention made in the block (calls
    made through that attribute, as vggt's Attention makes them)."""
    counts: Counter = Counter()
    original = F.scaled_dot_product_attention

    def counted(query, key, value, *args, **kwargs):
        counts[chosen_backend(query, key, value)] += 1
        return original(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = counted
    try:
        yield counts
    finally:
        F.scaled_dot_product_attention = original

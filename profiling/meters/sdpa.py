"""Counting, per backend, the scaled-dot-product-attention calls a block makes (the backend
as vggt.layers.attention_backends says PyTorch picks it)."""

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch.nn.functional as F

from vggt.layers.attention_backends import chosen_backend


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

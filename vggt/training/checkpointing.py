"""Activation checkpointing: what autograd keeps between a training forward and its backward.

One policy names it for every checkpointed unit of a model (a transformer block, a head's frame
chunk): `none` keeps every activation; `blocks` keeps a unit's inputs and recomputes the rest in
backward; `selective` keeps its inputs and its attention outputs (one token-wide tensor, costly
to recompute: quadratic in the tokens) and recomputes the cheap rest (norms, projections, MLP).
"""

from collections.abc import Callable
from functools import partial
from typing import TypeVar

import torch
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

CHECKPOINT_POLICIES = ("none", "blocks", "selective")
Result = TypeVar("Result")

# The fused attention kernels whose outputs `selective` keeps (whichever SDPA picks).
ATTENTION_OPS = frozenset(
    getattr(torch.ops.aten, name).default
    for name in (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    )
    if hasattr(torch.ops.aten, name)
)


def check_policy(policy: str) -> str:
    """`policy` if it names a checkpoint policy; ValueError naming the choices otherwise."""
    if policy not in CHECKPOINT_POLICIES:
        raise ValueError(
            f"unknown checkpoint policy {policy!r}; choose from {', '.join(CHECKPOINT_POLICIES)}"
        )
    return policy


def keep_attention(ctx: object, op: object, *args: object, **kwargs: object) -> CheckpointPolicy:
    """`selective`'s rule: save attention kernels' outputs, recompute every other operator."""
    if op in ATTENTION_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def run_checkpointed(
    policy: str, function: Callable[..., Result], *args: object, **kwargs: object
) -> Result:
    """`function(*args, **kwargs)`, its activations kept as `policy` says (without autograd, or
    with `none`, a plain call)."""
    if policy == "none" or not torch.is_grad_enabled():
        return function(*args, **kwargs)
    if policy == "blocks":
        return checkpoint(function, *args, use_reentrant=False, **kwargs)
    check_policy(policy)
    contexts = partial(create_selective_checkpoint_contexts, keep_attention)
    return checkpoint(function, *args, use_reentrant=False, context_fn=contexts, **kwargs)

"""Multi-head self-attention with fused qkv, optional qk-norm and optional 2-D RoPE."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Self-attention over [B, N, dim] tokens; `pos` feeds the rotary embedding if set."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        qk_norm: bool = False,
        fused_attn: bool = True,
        rope: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = rope

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor | None = None, inplace: bool = False
    ) -> torch.Tensor:
        """`inplace` (autograd off) lets RoPE rotate q and k in place."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        del qkv
        rotate = self.rope is not None and pos is not None
        q = self.q_norm(q)
        if rotate:
            q = self.rope(q, pos, inplace=inplace)
        k = self.k_norm(k)
        if rotate:
            k = self.rope(k, pos, inplace=inplace)
        if self.fused_attn:
            dropout = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            weights = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
            x = weights @ v
        del q, k, v
        x = x.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(x))


class MemEffAttention(Attention):
    """The DINOv2 attention entry point: plain attention, no RoPE, no attention bias."""

    def forward(
        self,
        x: torch.Tensor,
        attn_bias: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attn_bias is not None or pos is not None:
            raise ValueError("MemEffAttention supports neither attn_bias nor pos without xFormers")
        return super().forward(x)

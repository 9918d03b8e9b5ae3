"""Multi-head self-attention with fused qkv, optional qk-norm and optional 2-D RoPE."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

QKV = "qkv"


def attention_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype attention computes in: autocast's where it is on for the tensor's device, else
    the tensor's own (scaled_dot_product_attention is on autocast's lower-precision list)."""
    device_type = tensor.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


class Attention(nn.Module):
    """Self-attention over [B, N, dim] tokens; `pos` feeds the rotary embedding if set.

    The forward is `merge(attend(*project(x, pos)))`. The three pieces are public so that
    executors which split the work (by token chunks, or across devices) reuse the same math.
    """

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

    def project(
        self,
        x: torch.Tensor,
        pos: torch.Tensor | None = None,
        parts: str = QKV,
        rotate_inplace: bool = False,
    ) -> list[torch.Tensor]:
        """Heads [B, heads, N, head_dim] of `parts` ("qkv", "q", "kv", ...) for x [B, N, dim].

        q and k are normalised, with `pos` rotated, then cast once to `attention_dtype` (CUDA
        autocast runs the norms in fp32; attention would cast them again at every call). "qkv"
        uses the fused projection; a contiguous part of it multiplies only its rows of the
        weight. `rotate_inplace` (autograd off) lets RoPE overwrite the fresh projections
        instead of copying them.
        """
        first = QKV.find(parts)
        if not parts or first < 0:
            raise ValueError(f"parts must be a contiguous piece of {QKV!r}, got {parts!r}")
        batch, tokens, dim = x.shape
        if len(parts) == len(QKV):
            projected = self.qkv(x)
        else:
            rows = slice(first * dim, (first + len(parts)) * dim)
            bias = None if self.qkv.bias is None else self.qkv.bias[rows]
            projected = F.linear(x, self.qkv.weight[rows], bias)
        del x
        shape = (batch, tokens, len(parts), self.num_heads, self.head_dim)
        heads = list(projected.reshape(shape).permute(2, 0, 3, 1, 4).unbind(0))
        del projected
        rotate = self.rope is not None and pos is not None
        for index, name in enumerate(parts):
            if name == "v":
                continue
            head = (self.q_norm if name == "q" else self.k_norm)(heads[index])
            if rotate:
                head = self.rope(head, pos, inplace=rotate_inplace)
            heads[index] = head.to(attention_dtype(head))
        return heads

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product attention of q [B, heads, Nq, D] over k, v [B, heads, Nk, D]."""
        if self.fused_attn:
            dropout = self.attn_drop.p if self.training else 0.0
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        weights = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        return weights @ v

    def merge(self, heads: torch.Tensor) -> torch.Tensor:
        """Attention output [B, heads, N, D] -> the output projection [B, N, dim]."""
        batch, _, tokens, _ = heads.shape
        merged = heads.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(merged))

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.project(x, pos)
        heads = self.attend(q, k, v)
        del q, k, v
        return self.merge(heads)


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

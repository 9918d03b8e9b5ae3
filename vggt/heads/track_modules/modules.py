"""Transformer building blocks of the tracker (MLP, self- and cross-attention blocks)."""

from collections.abc import Callable
from functools import partial

import torch
from torch import nn


def _pair(value):
    """Return ``value`` as a 2-tuple (unchanged if it already is a tuple or list)."""
    if isinstance(value, tuple | list):
        return tuple(value)
    return (value, value)


class Mlp(nn.Module):
    """Two-layer MLP: ``fc1 -> act -> drop1 -> fc2 -> drop2``."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] | None = None,
        bias: bool | tuple[bool, bool] = True,
        drop: float | tuple[float, float] = 0.0,
        use_conv: bool = False,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        biases = _pair(bias)
        drops = _pair(drop)
        linear_layer = partial(nn.Conv2d, kernel_size=1) if use_conv else nn.Linear
        self.fc1 = linear_layer(in_features, hidden_features, bias=biases[0])
        self.act = act_layer()
        self.drop1 = nn.Dropout(drops[0])
        self.fc2 = linear_layer(hidden_features, out_features, bias=biases[1])
        self.drop2 = nn.Dropout(drops[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop1(x)
        x = self.fc2(x)
        return self.drop2(x)


class AttnBlock(nn.Module):
    """Self-attention block whose residual stream starts from the normalised input."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        attn_class: Callable[..., nn.Module] = nn.MultiheadAttention,
        mlp_ratio: float = 4.0,
        **block_kwargs,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.attn = attn_class(
            embed_dim=hidden_size, num_heads=num_heads, batch_first=True, **block_kwargs
        )
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=mlp_hidden_dim, drop=0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, L, hidden)`` -> same shape; ``mask`` is the attention's ``attn_mask``."""
        x = self.norm1(x)
        attn_out = self.attn(x, x, x, attn_mask=mask)[0]
        x = x + attn_out
        x = x + self.mlp(self.norm2(x))
        return x


class CrossAttnBlock(nn.Module):
    """Cross-attention block (queries ``x``, keys/values ``context``); residual is normed ``x``."""

    def __init__(
        self,
        hidden_size: int,
        context_dim: int,
        num_heads: int = 1,
        mlp_ratio: float = 4.0,
        **block_kwargs,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm_context = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.cross_attn = nn.MultiheadAttention(
            embed_dim=hidden_size, num_heads=num_heads, batch_first=True, **block_kwargs
        )
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=mlp_hidden_dim, drop=0)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x (B, L, hidden)`` attends to ``context (B, M, hidden)``; returns x's shape."""
        x = self.norm1(x)
        context = self.norm_context(context)
        x = x + self.cross_attn(x, context, context, attn_mask=mask)[0]
        x = x + self.mlp(self.norm2(x))
        return x

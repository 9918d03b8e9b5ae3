"""Transformer building blocks of the tracker: self- and cross-attention blocks."""

from collections.abc import Callable

import torch
from torch import nn

from vggt.layers.mlp import Mlp

# The most bytes of fp32 attention weights [B x heads, L, L] a tracker attention computes
# explicitly, as the reference does (nn.MultiheadAttention returning its weights); beyond, over
# long sequences (the time attention across thousands of frames), it runs the fused kernel,
# which never holds them: equal within rounding.
EXPLICIT_WEIGHTS_BYTES = 1 << 30


def explicit_weights(
    attention: nn.MultiheadAttention, queries: torch.Tensor, keys: torch.Tensor
) -> bool:
    """Whether attention of queries [B, L, C] over keys [B, M, C] computes its weights as the
    reference does (they fit `EXPLICIT_WEIGHTS_BYTES`)."""
    weights = queries.shape[0] * attention.num_heads * queries.shape[1] * keys.shape[1]
    return 4 * weights <= EXPLICIT_WEIGHTS_BYTES


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
        explicit = explicit_weights(self.attn, x, x)
        attn_out = self.attn(x, x, x, attn_mask=mask, need_weights=explicit)[0]
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
        explicit = explicit_weights(self.cross_attn, x, context)
        x = x + self.cross_attn(x, context, context, attn_mask=mask, need_weights=explicit)[0]
        x = x + self.mlp(self.norm2(x))
        return x

"""Two-layer feed-forward network used inside every transformer block."""

from collections.abc import Callable

import torch
from torch import nn


class Mlp(nn.Module):
    """fc1 -> activation -> dropout -> fc2 -> dropout, as in ViT blocks."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """`inplace` (autograd off only) applies a GELU activation in place on the fc1 output."""
        x = self.fc1(x)
        if inplace and isinstance(self.act, nn.GELU):
            torch.ops.aten.gelu_(x, approximate=self.act.approximate)
        else:
            x = self.act(x)
        return self.drop(self.fc2(self.drop(x)))

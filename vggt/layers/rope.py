"""2-D rotary position embedding for patch tokens, computed without data-dependent sizes."""

import torch
from torch import nn


class PositionGetter:
    """Returns the (y, x) integer grid positions of an height x width patch grid."""

    def __call__(
        self, batch_size: int, height: int, width: int, device: torch.device | str
    ) -> torch.Tensor:
        ys = torch.arange(height, device=device)
        xs = torch.arange(width, device=device)
        grid = torch.cartesian_prod(ys, xs)
        return grid.view(1, height * width, 2).expand(batch_size, -1, -1).clone()


class RotaryPositionEmbedding2D(nn.Module):
    """Rotates the first half of each head's features by the row and the second by the column.

    Angles are computed directly from the positions (p * inv_freq), which equals the table
    lookup of the reference but never needs `positions.max()` on the host.
    """

    def __init__(self, frequency: float = 100.0, scaling_factor: float = 1.0) -> None:
        super().__init__()
        self.base_frequency = frequency
        self.scaling_factor = scaling_factor

    def _cos_sin(
        self, positions: torch.Tensor, dim: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin tables [B, 1, N, dim] for one axis (rotate-half layout)."""
        exponents = torch.arange(0, dim, 2, device=positions.device).float() / dim
        inv_freq = 1.0 / (self.base_frequency**exponents)
        angles = (positions.float()[..., None] * inv_freq).to(dtype)
        sin = angles.sin()
        cos = angles.cos()
        # rotate_half(x) * sin == swap_halves(x) * [-sin, sin]: the negation moves onto sin.
        return torch.cat((cos, cos), dim=-1)[:, None], torch.cat((-sin, sin), dim=-1)[:, None]

    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, inplace: bool = False
    ) -> torch.Tensor:
        """tokens [B, heads, N, D], positions [B, N, 2] as (y, x); returns rotated tokens.

        `inplace` (autograd off) rotates `tokens` itself, holding only a half-size temporary.
        """
        dim = tokens.shape[-1]
        if dim % 4:
            raise ValueError(f"RoPE-2D needs a head dim divisible by 4, got {dim}")
        if positions.ndim != 3 or positions.shape[-1] != 2:
            raise ValueError(f"positions must be [B, N, 2], got {tuple(positions.shape)}")
        half, quarter = dim // 2, dim // 4
        inplace = inplace and not torch.is_grad_enabled()
        rotated_halves = []
        for axis, part in enumerate((slice(None, half), slice(half, None))):
            x = tokens[..., part]
            cos, sin = self._cos_sin(positions[..., axis], half, tokens.dtype)
            swapped = torch.cat((x[..., quarter:], x[..., :quarter]), dim=-1).mul_(sin)
            if inplace:
                x.mul_(cos).add_(swapped)
            else:
                rotated_halves.append(x * cos + swapped)
            del swapped
        return tokens if inplace else torch.cat(rotated_halves, dim=-1)

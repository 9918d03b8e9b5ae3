"""Sinusoidal embeddings of normalised image coordinates, shared by the dense heads."""

import torch


def make_sincos_pos_embed(embed_dim: int, pos: torch.Tensor, omega_0: float = 100) -> torch.Tensor:
    """[M] positions -> [M, embed_dim] as [sin(pos * w) | cos(pos * w)], computed in float64."""
    dtype = torch.float32 if pos.device.type == "mps" else torch.float64
    omega = torch.arange(embed_dim // 2, dtype=dtype, device=pos.device)
    omega /= embed_dim / 2.0
    omega = 1.0 / omega_0**omega
    angles = pos.reshape(-1).to(dtype)[:, None] * omega[None, :]
    return torch.cat((angles.sin(), angles.cos()), dim=1).float()


def position_grid_to_embed(
    pos_grid: torch.Tensor, embed_dim: int, omega_0: float = 100
) -> torch.Tensor:
    """[H, W, 2] (u, v) grid -> [H, W, embed_dim]: u embedded in the first half, v in the second."""
    height, width, _ = pos_grid.shape
    flat = pos_grid.reshape(-1, 2)
    emb_u = make_sincos_pos_embed(embed_dim // 2, flat[:, 0], omega_0)
    emb_v = make_sincos_pos_embed(embed_dim // 2, flat[:, 1], omega_0)
    return torch.cat((emb_u, emb_v), dim=-1).view(height, width, embed_dim)


def create_uv_grid(
    width: int,
    height: int,
    aspect_ratio: float | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """[height, width, 2] pixel-centre coordinates spanning a unit-diagonal rectangle."""
    if aspect_ratio is None:
        aspect_ratio = float(width) / float(height)
    diagonal = (aspect_ratio**2 + 1.0) ** 0.5
    span_x = aspect_ratio / diagonal
    span_y = 1.0 / diagonal
    left, right = -span_x * (width - 1) / width, span_x * (width - 1) / width
    top, bottom = -span_y * (height - 1) / height, span_y * (height - 1) / height
    xs = torch.linspace(left, right, steps=width, dtype=dtype, device=device)
    ys = torch.linspace(top, bottom, steps=height, dtype=dtype, device=device)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack((uu, vv), dim=-1)

"""Positional embeddings and bilinear sampling helpers used by the tracker."""

import torch
import torch.nn.functional as F


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """1-D sin-cos embedding of the flattened ``pos``: ``(1, M, embed_dim)`` float32.

    Frequencies ``1 / 10000^(k / (embed_dim/2))``; the outer product, sin and cos run in float64.
    """
    if embed_dim % 2 != 0:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64, device=pos.device)
    omega = omega / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    pos = pos.reshape(-1).to(torch.float64)
    out = torch.einsum("m,d->md", pos, omega)
    emb = torch.cat([torch.sin(out), torch.cos(out)], dim=1)
    return emb[None].float()


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: tuple[int, int] | int) -> torch.Tensor:
    """2-D sin-cos embedding of an ``(HH, WW)`` pixel grid: ``(1, embed_dim, HH, WW)`` float32.

    The first half of the channels encodes x (the column), the second half y (the row).
    """
    if isinstance(grid_size, int):
        grid_h, grid_w = grid_size, grid_size
    else:
        grid_h, grid_w = grid_size
    if embed_dim % 2 != 0:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    range_h = torch.arange(grid_h, dtype=torch.float32)
    range_w = torch.arange(grid_w, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(range_w, range_h, indexing="xy"), dim=0)
    grid = grid.reshape(2, 1, grid_h, grid_w)
    emb_x = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
    emb_y = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    emb = torch.cat([emb_x, emb_y], dim=2)
    return emb.reshape(1, grid_h, grid_w, embed_dim).permute(0, 3, 1, 2)


def get_2d_embedding(xy: torch.Tensor, C: int, cat_coords: bool = True) -> torch.Tensor:
    """Embed ``xy (B, N, 2)`` with a linear frequency ramp and interleaved sin/cos.

    Returns ``(B, N, 2C)`` float32 (``[pe_x | pe_y]``), with ``xy`` prepended if ``cat_coords``.
    """
    B, N, D = xy.shape
    if D != 2:
        raise ValueError(f"get_2d_embedding expects (B, N, 2) coordinates, got {tuple(xy.shape)}")
    x = xy[:, :, 0:1]
    y = xy[:, :, 1:2]
    div_term = torch.arange(0, C, 2, device=xy.device, dtype=torch.float32) * (1000.0 / C)
    div_term = div_term.reshape(1, 1, C // 2)
    pe_x = torch.zeros(B, N, C, device=xy.device, dtype=torch.float32)
    pe_y = torch.zeros(B, N, C, device=xy.device, dtype=torch.float32)
    pe_x[:, :, 0::2] = torch.sin(x * div_term)
    pe_x[:, :, 1::2] = torch.cos(x * div_term)
    pe_y[:, :, 0::2] = torch.sin(y * div_term)
    pe_y[:, :, 1::2] = torch.cos(y * div_term)
    pe = torch.cat([pe_x, pe_y], dim=2)
    if cat_coords:
        pe = torch.cat([xy, pe], dim=2)
    return pe


def bilinear_sampler(
    input: torch.Tensor,
    coords: torch.Tensor,
    align_corners: bool = True,
    padding_mode: str = "border",
) -> torch.Tensor:
    """Sample ``input (N, C, H, W)`` at pixel coordinates ``coords (N, Ho, Wo, 2)`` given as (x, y).

    Pixel coordinates are mapped to ``[-1, 1]`` and passed to ``F.grid_sample`` (bilinear).
    """
    coords = coords.detach().clone()
    coords = coords.to(input.device).to(input.dtype)
    sizes = input.shape[2:]
    if len(sizes) not in (2, 3):
        raise ValueError(f"bilinear_sampler expects a 4-D or 5-D input, got {input.dim()}-D")
    if len(sizes) == 3:
        coords = coords[..., [1, 2, 0]]
    if align_corners:
        factors = [2 / max(size - 1, 1) for size in reversed(sizes)]
    else:
        factors = [2 / size for size in reversed(sizes)]
    scale = torch.tensor(factors, device=coords.device, dtype=coords.dtype)
    coords = coords * scale
    coords = coords - 1
    return F.grid_sample(
        input, coords, mode="bilinear", align_corners=align_corners, padding_mode=padding_mode
    )


def sample_features4d(input: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Sample ``input (B, C, H, W)`` at ``coords (B, R, 2)`` (bilinear, border): ``(B, R, C)``."""
    B = input.shape[0]
    coords = coords.unsqueeze(2)
    feats = bilinear_sampler(input, coords)
    return feats.permute(0, 2, 1, 3).view(B, -1, feats.shape[1] * feats.shape[3])

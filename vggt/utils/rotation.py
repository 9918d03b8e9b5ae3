"""Quaternion <-> rotation-matrix conversions (quaternions are scalar-last: x, y, z, w).

Both functions use only static-shape tensor operations, so they also run under
``torch._subclasses.fake_tensor.FakeTensorMode`` and on the meta device.
"""

import torch

# Reorders a (r, i, j, k) quaternion into the scalar-last (i, j, k, r) layout.
_RIJK_TO_IJKR = (1, 2, 3, 0)


def quat_to_mat(quaternions: torch.Tensor) -> torch.Tensor:
    """Convert (..., 4) xyzw quaternions into (..., 3, 3) rotation matrices.

    Non-unit quaternions are normalised implicitly (the scale ``2 / |q|^2`` absorbs the norm).
    """
    if quaternions.shape[-1:] != (4,):
        raise ValueError(
            f"quaternions must have a trailing dim of 4, got {tuple(quaternions.shape)}"
        )
    i, j, k, r = torch.unbind(quaternions, dim=-1)
    s = 2.0 / (quaternions * quaternions).sum(dim=-1)
    entries = (
        1 - s * (j * j + k * k),
        s * (i * j - k * r),
        s * (i * k + j * r),
        s * (i * j + k * r),
        1 - s * (i * i + k * k),
        s * (j * k - i * r),
        s * (i * k - j * r),
        s * (j * k + i * r),
        1 - s * (i * i + j * j),
    )
    return torch.stack(entries, dim=-1).reshape((*quaternions.shape[:-1], 3, 3))


def _sqrt_positive_part(x: torch.Tensor) -> torch.Tensor:
    """Return ``sqrt(x)`` where ``x > 0`` and 0 elsewhere, with finite gradients everywhere."""
    positive = x > 0
    safe = torch.where(positive, x, torch.ones_like(x))
    return torch.where(positive, torch.sqrt(safe), torch.zeros_like(x))


def mat_to_quat(matrix: torch.Tensor) -> torch.Tensor:
    """Convert (..., 3, 3) rotation matrices into (..., 4) xyzw quaternions with w >= 0."""
    if matrix.dim() < 2 or matrix.shape[-2:] != (3, 3):
        raise ValueError(f"matrix must have trailing dims (3, 3), got {tuple(matrix.shape)}")
    batch_shape = matrix.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(
        matrix.reshape((*batch_shape, 9)), dim=-1
    )
    q_abs = _sqrt_positive_part(
        torch.stack(
            (
                1.0 + m00 + m11 + m22,
                1.0 + m00 - m11 - m22,
                1.0 - m00 + m11 - m22,
                1.0 - m00 - m11 + m22,
            ),
            dim=-1,
        )
    )
    # One candidate per row, in (r, i, j, k) order; row n is accurate when q_abs[n] is large.
    candidates = torch.stack(
        (
            torch.stack((q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01), dim=-1),
            torch.stack((m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20), dim=-1),
            torch.stack((m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21), dim=-1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2), dim=-1),
        ),
        dim=-2,
    )
    candidates = candidates / (2.0 * q_abs[..., None].clamp_min(0.1))
    best = q_abs.argmax(dim=-1)
    index = best[..., None, None].expand((*batch_shape, 1, 4))
    rijk = torch.gather(candidates, dim=-2, index=index).squeeze(-2)
    quat = rijk[..., list(_RIJK_TO_IJKR)]
    return torch.where(quat[..., 3:4] < 0, -quat, quat)

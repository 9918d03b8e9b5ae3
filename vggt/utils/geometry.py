"""Rigid-transform inversion and depth-map unprojection helpers (NumPy and PyTorch)."""

from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def closed_form_inverse_se3(
    se3: ArrayT, R: ArrayT | None = None, T: ArrayT | None = None
) -> ArrayT:
    """Invert a batch of (N, 4, 4) or (N, 3, 4) rigid transforms, returning (N, 4, 4).

    ``R`` (N, 3, 3) and ``T`` (N, 3, 1) may be passed to override the blocks read from ``se3``.
    """
    is_numpy = isinstance(se3, np.ndarray)
    if not is_numpy and not isinstance(se3, torch.Tensor):
        raise TypeError(f"se3 must be a numpy array or torch tensor, got {type(se3).__name__}")
    if se3.ndim != 3 or tuple(se3.shape[-2:]) not in ((4, 4), (3, 4)):
        raise ValueError(f"se3 must have shape (N, 4, 4) or (N, 3, 4), got {tuple(se3.shape)}")
    if R is None:
        R = se3[:, :3, :3]
    if T is None:
        T = se3[:, :3, 3:]
    n = se3.shape[0]
    if is_numpy:
        R_inv = np.transpose(R, (0, 2, 1))
        T_inv = -np.matmul(R_inv, T)
        inverted = np.tile(np.eye(4), (n, 1, 1))
    else:
        R_inv = R.transpose(1, 2)
        T_inv = -torch.bmm(R_inv, T)
        inverted = torch.eye(4, dtype=R.dtype, device=R.device)[None].repeat(n, 1, 1)
    inverted[:, :3, :3] = R_inv
    inverted[:, :3, 3:] = T_inv
    return inverted


def depth_to_cam_coords_points(
    depth_map: np.ndarray | torch.Tensor, intrinsic: np.ndarray | torch.Tensor
) -> np.ndarray:
    """Unproject an (H, W) depth map into float32 (H, W, 3) camera-frame points.

    Pixel (u, v) uses integer coordinates (no half-pixel offset); skew must be zero.
    """
    depth_map = _to_numpy(depth_map)
    intrinsic = _to_numpy(intrinsic)
    if intrinsic.shape != (3, 3):
        raise ValueError(f"intrinsic must be 3x3, got {intrinsic.shape}")
    if intrinsic[0, 1] != 0 or intrinsic[1, 0] != 0:
        raise ValueError("intrinsic must have zero skew")
    height, width = depth_map.shape
    fx, fy = intrinsic[0, 0], intrinsic[1, 1]
    cx, cy = intrinsic[0, 2], intrinsic[1, 2]
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    x_cam = (u - cx) * depth_map / fx
    y_cam = (v - cy) * depth_map / fy
    z_cam = depth_map
    return np.stack((x_cam, y_cam, z_cam), axis=-1).astype(np.float32)


def depth_to_world_coords_points(
    depth_map: np.ndarray | torch.Tensor | None,
    extrinsic: np.ndarray | torch.Tensor,
    intrinsic: np.ndarray | torch.Tensor,
    eps: float = 1e-8,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Unproject an (H, W) depth map with camera-from-world (3, 4) ``extrinsic`` into world space.

    Returns ``(world_points (H, W, 3), cam_points (H, W, 3), valid_mask (H, W))``.
    """
    if depth_map is None:
        return None, None, None
    depth_map = _to_numpy(depth_map)
    extrinsic = _to_numpy(extrinsic)
    valid_mask = depth_map > eps
    cam_points = depth_to_cam_coords_points(depth_map, intrinsic)
    cam_to_world = closed_form_inverse_se3(extrinsic[None])[0]
    rotation = cam_to_world[:3, :3]
    translation = cam_to_world[:3, 3]
    world_points = np.dot(cam_points, rotation.T) + translation
    return world_points, cam_points, valid_mask


def unproject_depth_map_to_point_map(
    depth_map: np.ndarray | torch.Tensor,
    extrinsics_cam: np.ndarray | torch.Tensor,
    intrinsics_cam: np.ndarray | torch.Tensor,
) -> np.ndarray:
    """Unproject (S, H, W[, 1]) depth maps with per-frame cameras into (S, H, W, 3) world points."""
    depth_map = _to_numpy(depth_map)
    extrinsics_cam = _to_numpy(extrinsics_cam)
    intrinsics_cam = _to_numpy(intrinsics_cam)
    world_points = []
    for frame in range(depth_map.shape[0]):
        frame_depth = depth_map[frame]
        if frame_depth.ndim == 3:
            frame_depth = frame_depth.squeeze(-1)
        points, _, _ = depth_to_world_coords_points(
            frame_depth, extrinsics_cam[frame], intrinsics_cam[frame]
        )
        world_points.append(points)
    return np.stack(world_points, axis=0)

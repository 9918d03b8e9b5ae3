"""Camera pose encoding: extrinsics + intrinsics <-> 9-D ``absT_quaR_FoV`` vectors.

Extrinsics are camera-from-world ``[R | t]`` (OpenCV axes: x right, y down, z forward) and
intrinsics are pixel-unit ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` matrices.
"""

import torch

from vggt.utils.rotation import mat_to_quat, quat_to_mat

SUPPORTED_POSE_ENCODING = "absT_quaR_FoV"


def _check_encoding_type(pose_encoding_type: str) -> None:
    if pose_encoding_type != SUPPORTED_POSE_ENCODING:
        raise ValueError(
            f"Unsupported pose_encoding_type {pose_encoding_type!r}; "
            f"only {SUPPORTED_POSE_ENCODING!r} is implemented"
        )


def _image_height_width(image_size_hw: tuple[int, int] | None) -> tuple[float, float]:
    if image_size_hw is None:
        raise ValueError("image_size_hw=(H, W) is required to convert between focal length and FoV")
    height, width = image_size_hw
    return height, width


def extri_intri_to_pose_encoding(
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    image_size_hw: tuple[int, int] | None = None,
    pose_encoding_type: str = "absT_quaR_FoV",
) -> torch.Tensor:
    """Encode (B, S, 3, 4) extrinsics and (B, S, 3, 3) intrinsics as float32 (B, S, 9).

    The layout is ``[t (3), quaternion xyzw (4), fov_h, fov_w]``.
    """
    _check_encoding_type(pose_encoding_type)
    height, width = _image_height_width(image_size_hw)
    translation = extrinsics[..., :3, 3]
    quat = mat_to_quat(extrinsics[..., :3, :3])
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    encoding = torch.cat([translation, quat, fov_h[..., None], fov_w[..., None]], dim=-1)
    return encoding.float()


def pose_encoding_to_extri_intri(
    pose_encoding: torch.Tensor,
    image_size_hw: tuple[int, int] | None = None,
    pose_encoding_type: str = "absT_quaR_FoV",
    build_intrinsics: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode (B, S, 9) encodings into (B, S, 3, 4) extrinsics and (B, S, 3, 3) intrinsics.

    The principal point is placed at the image centre; intrinsics are None unless requested.
    """
    _check_encoding_type(pose_encoding_type)
    translation = pose_encoding[..., :3]
    quat = pose_encoding[..., 3:7]
    fov_h = pose_encoding[..., 7]
    fov_w = pose_encoding[..., 8]
    rotation = quat_to_mat(quat)
    extrinsics = torch.cat([rotation, translation[..., None]], dim=-1)
    if not build_intrinsics:
        return extrinsics, None
    height, width = _image_height_width(image_size_hw)
    fy = (height / 2.0) / torch.tan(fov_h / 2.0)
    fx = (width / 2.0) / torch.tan(fov_w / 2.0)
    intrinsics = torch.zeros((*pose_encoding.shape[:2], 3, 3), device=pose_encoding.device)
    intrinsics[..., 0, 0] = fx
    intrinsics[..., 1, 1] = fy
    intrinsics[..., 0, 2] = width / 2
    intrinsics[..., 1, 2] = height / 2
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics

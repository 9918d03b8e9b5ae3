"""Activations that turn raw head outputs into poses, points, depths and confidences."""

import torch
import torch.nn.functional as F


def inverse_log_transform(y: torch.Tensor) -> torch.Tensor:
    """sign(y) * (exp(|y|) - 1): undoes a signed log1p compression."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


def base_pose_act(pose_enc: torch.Tensor, act_type: str = "linear") -> torch.Tensor:
    """Apply one named activation to a slice of the pose encoding."""
    if act_type == "linear":
        return pose_enc
    if act_type == "inv_log":
        return inverse_log_transform(pose_enc)
    if act_type == "exp":
        return torch.exp(pose_enc)
    if act_type == "relu":
        return F.relu(pose_enc)
    raise ValueError(f"unknown pose activation {act_type!r}")


def activate_pose(
    pred_pose_enc: torch.Tensor,
    trans_act: str = "linear",
    quat_act: str = "linear",
    fl_act: str = "linear",
) -> torch.Tensor:
    """Activate translation [:3], quaternion [3:7] and field of view [7:] separately."""
    translation = base_pose_act(pred_pose_enc[..., :3], trans_act)
    quaternion = base_pose_act(pred_pose_enc[..., 3:7], quat_act)
    field_of_view = base_pose_act(pred_pose_enc[..., 7:], fl_act)
    return torch.cat((translation, quaternion, field_of_view), dim=-1)


def _activate_points(xyz: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "norm_exp":
        dist = xyz.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        return xyz / dist * torch.expm1(dist)
    if activation == "norm":
        return xyz / xyz.norm(dim=-1, keepdim=True)
    if activation == "exp":
        return torch.exp(xyz)
    if activation == "relu":
        return F.relu(xyz)
    if activation == "inv_log":
        return inverse_log_transform(xyz)
    if activation == "xy_inv_log":
        z = inverse_log_transform(xyz[..., 2:3])
        return torch.cat((xyz[..., :2] * z, z), dim=-1)
    if activation == "sigmoid":
        return torch.sigmoid(xyz)
    if activation == "linear":
        return xyz
    raise ValueError(f"unknown point activation {activation!r}")


def _activate_confidence(conf: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "expp1":
        return 1 + conf.exp()
    if activation == "expp0":
        return conf.exp()
    if activation == "sigmoid":
        return torch.sigmoid(conf)
    raise ValueError(f"unknown confidence activation {activation!r}")


def activate_head(
    out: torch.Tensor, activation: str = "norm_exp", conf_activation: str = "expp1"
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C, H, W] -> (activated first C-1 channels [N, H, W, C-1], confidence [N, H, W])."""
    fmap = out.permute(0, 2, 3, 1)
    points = _activate_points(fmap[..., :-1], activation)
    confidence = _activate_confidence(fmap[..., -1], conf_activation)
    return points, confidence

"""A fine-tuning loss over VGGT's predictions, and seeded targets to profile it with.

Each term is a mean over frames of a per-frame value, summed over this rank's frames and
divided by `total_frames`: split over ranks, the ranks' losses add up to one device's.
- camera: smooth-L1 between every refinement's pose encoding and the target, later
  refinements weighted more (`CAMERA_GAMMA` per step back), as VGGT trains its camera head;
- depth and point: the confidence-weighted L1 of the DPT heads minus `CONF_ALPHA` times the
  log-confidence, which keeps the confidence from collapsing;
- track: smooth-L1 of the last tracks plus binary cross-entropy of visibility.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CAMERA_GAMMA = 0.6
CONF_ALPHA = 0.2


@dataclass
class Targets:
    """Ground truth for `batch` sequences of `frames` frames: pose encodings [B, S, 9], depth
    [B, S, H, W, 1], world points [B, S, H, W, 3]; tracks [B, S, N, 2] and visibility
    [B, S, N] when points are tracked."""

    pose_enc: torch.Tensor
    depth: torch.Tensor
    world_points: torch.Tensor
    track: torch.Tensor | None = None
    vis: torch.Tensor | None = None

    def frames(self, start: int, end: int) -> "Targets":
        """The targets of frames [start, end) (a rank's share of a split sequence)."""
        return Targets(*(None if t is None else t[:, start:end] for t in self.__dict__.values()))

    def tensors(self) -> list[torch.Tensor]:
        """The targets that are set (tracks only when points are tracked)."""
        return [t for t in self.__dict__.values() if t is not None]

    def to(self, device: torch.device | str) -> "Targets":
        """The targets on `device`."""
        return Targets(*(None if t is None else t.to(device) for t in self.__dict__.values()))


def seeded_targets(
    batch: int, frames: int, height: int, width: int, query_points: int = 0, seed: int = 0
) -> Targets:
    """Plausible random targets (positive depths, unit quaternions, tracks in the image), the
    same for a seed on every machine."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator)

    quaternion = F.normalize(uniform(batch, frames, 4) - 0.5, dim=-1)
    pose = torch.cat(
        (uniform(batch, frames, 3) - 0.5, quaternion, 0.5 + uniform(batch, frames, 2)), -1
    )
    track = vis = None
    if query_points:
        scale = torch.tensor([width, height], dtype=torch.float32)
        track = uniform(batch, frames, query_points, 2) * scale
        vis = (uniform(batch, frames, query_points) > 0.3).float()
    return Targets(
        pose_enc=pose,
        depth=0.5 + 4 * uniform(batch, frames, height, width, 1),
        world_points=4 * uniform(batch, frames, height, width, 3) - 2,
        track=track,
        vis=vis,
    )


def frame_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over batch and frames of the per-frame mean of values [B, S, ...]."""
    return values.flatten(2).mean(-1).sum()


def camera_loss(pose_enc_list: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 of every refinement, weighted `CAMERA_GAMMA`**(steps from the last)."""
    steps = len(pose_enc_list)
    total = 0
    for step, pose_enc in enumerate(pose_enc_list):
        error = F.smooth_l1_loss(pose_enc.float(), target, reduction="none")
        total = total + CAMERA_GAMMA ** (steps - 1 - step) * frame_sum(error)
    return total


def confident_l1(
    prediction: torch.Tensor, conf: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """conf * |prediction - target| - CONF_ALPHA * log(conf), per-frame means summed."""
    error = (prediction.float() - target).abs().sum(-1)
    return frame_sum(conf * error - CONF_ALPHA * torch.log(conf))


def training_loss(
    predictions: dict, targets: Targets, total_frames: int | None = None
) -> dict[str, torch.Tensor]:
    """The loss terms the predictions have targets for, and their sum under "total"; each
    divided by `total_frames` (default: the predictions' own frames)."""
    frames = total_frames or targets.pose_enc.shape[0] * targets.pose_enc.shape[1]
    terms = {}
    if "pose_enc_list" in predictions:
        terms["camera"] = camera_loss(predictions["pose_enc_list"], targets.pose_enc)
    if "depth" in predictions:
        terms["depth"] = confident_l1(
            predictions["depth"], predictions["depth_conf"], targets.depth
        )
    if "world_points" in predictions:
        terms["point"] = confident_l1(
            predictions["world_points"], predictions["world_points_conf"], targets.world_points
        )
    if "track" in predictions and targets.track is not None:
        error = F.smooth_l1_loss(predictions["track"].float(), targets.track, reduction="none")
        visibility = F.binary_cross_entropy(
            predictions["vis"].float().clamp(1e-6, 1 - 1e-6), targets.vis, reduction="none"
        )
        terms["track"] = frame_sum(error) + frame_sum(visibility)
    if not terms:
        raise ValueError("the predictions hold nothing the loss has a target for")
    terms = {name: value / frames for name, value in terms.items()}
    terms["total"] = sum(terms.values())
    return terms


def layers_loss(
    layers: object, indices: list[int], total_frames: int | None = None
) -> torch.Tensor:
    """For an aggregator trained alone: the mean square of the layers `indices` (the heads'),
    per frame, summed and divided by `total_frames` (default: the layers' own frames)."""
    total = 0
    for index in indices:
        layer = layers[index].float()
        total = total + frame_sum(layer.square())
    frames = total_frames or layers[indices[0]].shape[0] * layers[indices[0]].shape[1]
    return total / frames

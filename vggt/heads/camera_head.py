"""Camera head: iteratively refines a 9-D pose encoding per frame from its camera token."""

from collections.abc import Sequence

import torch
from torch import nn

from vggt.heads.head_act import activate_pose
from vggt.layers.block import Block
from vggt.layers.mlp import Mlp

POSE_ENCODING_DIMS = {"absT_quaR_FoV": 9}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive layer-norm modulation."""
    return x * (1 + scale) + shift


class CameraHead(nn.Module):
    """Reads the camera token of the last aggregator layer; returns one pose per iteration."""

    def __init__(
        self,
        dim_in: int = 2048,
        trunk_depth: int = 4,
        pose_encoding_type: str = "absT_quaR_FoV",
        num_heads: int = 16,
        mlp_ratio: int = 4,
        init_values: float = 0.01,
        trans_act: str = "linear",
        quat_act: str = "linear",
        fl_act: str = "relu",
    ) -> None:
        super().__init__()
        if pose_encoding_type not in POSE_ENCODING_DIMS:
            raise ValueError(f"unsupported pose_encoding_type {pose_encoding_type!r}")
        self.target_dim = POSE_ENCODING_DIMS[pose_encoding_type]
        self.trans_act = trans_act
        self.quat_act = quat_act
        self.fl_act = fl_act
        self.trunk_depth = trunk_depth
        self.trunk = nn.Sequential(
            *(
                Block(dim=dim_in, num_heads=num_heads, mlp_ratio=mlp_ratio, init_values=init_values)
                for _ in range(trunk_depth)
            )
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.target_dim))
        self.embed_pose = nn.Linear(self.target_dim, dim_in)
        # Named as in the published checkpoint (hence not snake_case).
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(
            in_features=dim_in, hidden_features=dim_in // 2, out_features=self.target_dim, drop=0
        )

    def forward(
        self, aggregated_tokens_list: Sequence[torch.Tensor], num_iterations: int = 4
    ) -> list[torch.Tensor]:
        """Return `num_iterations` activated pose encodings, each [B, S, 9]."""
        pose_tokens = self.token_norm(aggregated_tokens_list[-1][:, :, 0])
        return self.trunk_fn(pose_tokens, num_iterations)

    def trunk_fn(self, pose_tokens: torch.Tensor, num_iterations: int) -> list[torch.Tensor]:
        """Refine the pose encoding, conditioning each pass on the previous raw estimate."""
        batch, frames, _ = pose_tokens.shape
        pred_pose_enc = None
        predictions = []
        for _ in range(num_iterations):
            if pred_pose_enc is None:
                condition = self.embed_pose(self.empty_pose_tokens.expand(batch, frames, -1))
            else:
                pred_pose_enc = pred_pose_enc.detach()
                condition = self.embed_pose(pred_pose_enc)
            shift, scale, gate = self.poseLN_modulation(condition).chunk(3, dim=-1)
            modulated = gate * modulate(self.adaln_norm(pose_tokens), shift, scale)
            modulated = self.trunk(modulated + pose_tokens)
            delta = self.pose_branch(self.trunk_norm(modulated))
            pred_pose_enc = delta if pred_pose_enc is None else pred_pose_enc + delta
            predictions.append(
                activate_pose(pred_pose_enc, self.trans_act, self.quat_act, self.fl_act)
            )
        return predictions

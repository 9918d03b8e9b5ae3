"""VGGT's alternating-attention aggregator: frame-wise and global attention over all frames."""

from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import nn

from vggt.layers import vision_transformer as vits
from vggt.layers.block import Block
from vggt.layers.patch_embed import PatchEmbed
from vggt.layers.rope import PositionGetter, RotaryPositionEmbedding2D
from vggt.training.checkpointing import check_policy, run_checkpointed

# ImageNet statistics, made tensors of the weights' dtype (as the reference's buffers follow
# `.to(dtype)`) on the input's device at each call: not buffers, so a model built on the meta
# device and loaded with assign=True needs no extra step.
_RESNET_MEAN = (0.485, 0.456, 0.406)
_RESNET_STD = (0.229, 0.224, 0.225)

DINOV2_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "dinov2_vits14_reg": vits.vit_small,
    "dinov2_vitb14_reg": vits.vit_base,
    "dinov2_vitl14_reg": vits.vit_large,
    "dinov2_vitg2_reg": vits.vit_giant2,
}
ATTENTION_TYPES = ("frame", "global")


def slice_expand_and_flatten(
    token: torch.Tensor, batch: int, frames: int, first_frame: bool = True
) -> torch.Tensor:
    """[1, 2, X, C] learned tokens -> [B*S, X, C]: variant 0 for frame 0, variant 1 after.

    `first_frame=False` (frames that continue a sequence held elsewhere) uses variant 1 for all.
    """
    first = token[:, 0:1] if first_frame else token[:, 1:]
    rest = token[:, 1:].expand(batch, frames - 1, *token.shape[2:])
    return torch.cat((first.expand(batch, 1, *token.shape[2:]), rest), dim=1).view(
        batch * frames, *token.shape[2:]
    )


def check_images(images: torch.Tensor, patch_size: int) -> None:
    """Raise ValueError unless images is a floating-point [B, S, 3, H, W] tensor with H and W
    multiples of the patch."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a tensor, got {type(images).__name__}")
    if images.ndim != 5:
        raise ValueError(f"images must be [B, S, 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[2] != 3:
        raise ValueError(f"images must have 3 channels, got {images.shape[2]}")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be floating point in [0, 1], got {images.dtype} "
            "(for 0..255 integer pixels pass images.float() / 255)"
        )
    height, width = images.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not a multiple of the patch size {patch_size}"
        )
    if images.shape[0] == 0 or images.shape[1] == 0:
        raise ValueError(f"images must hold at least one frame, got shape {tuple(images.shape)}")


class Aggregator(nn.Module):
    """Embeds frames into patch tokens and alternates frame and global attention blocks.

    forward returns one [B, S, P, 2C] tensor per layer (frame output || global output) and the
    index of the first patch token (after the camera and register tokens).
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        block_fn: Callable[..., nn.Module] = Block,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        patch_embed: str = "dinov2_vitl14_reg",
        aa_order: list[str] | tuple[str, ...] = ("frame", "global"),
        aa_block_size: int = 1,
        qk_norm: bool = True,
        rope_freq: int = 100,
        init_values: float = 0.01,
    ) -> None:
        super().__init__()
        if sorted(aa_order) != sorted(ATTENTION_TYPES):
            raise ValueError(f"aa_order must order {ATTENTION_TYPES} once each, got {aa_order}")
        if depth % aa_block_size:
            raise ValueError(f"depth {depth} is not a multiple of aa_block_size {aa_block_size}")
        self._build_patch_embed(patch_embed, img_size, patch_size, num_register_tokens, embed_dim)
        self.rope = RotaryPositionEmbedding2D(frequency=rope_freq) if rope_freq > 0 else None
        self.position_getter = PositionGetter() if self.rope is not None else None
        make_block = partial(
            block_fn,
            dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            ffn_bias=ffn_bias,
            init_values=init_values,
            qk_norm=qk_norm,
            rope=self.rope,
        )
        self.frame_blocks = nn.ModuleList(make_block() for _ in range(depth))
        self.global_blocks = nn.ModuleList(make_block() for _ in range(depth))
        self.depth = depth
        self.aa_order = list(aa_order)
        self.patch_size = patch_size
        self.aa_block_size = aa_block_size
        self.aa_block_num = depth // aa_block_size
        self.embed_dim = embed_dim

        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, embed_dim))
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, embed_dim))
        self.patch_start_idx = 1 + num_register_tokens
        nn.init.normal_(self.camera_token, std=1e-6)
        nn.init.normal_(self.register_token, std=1e-6)
        # What a training forward keeps for backward (vggt.training.checkpointing); the
        # reference checkpoints every block.
        self.checkpointing = "blocks"
        # An inference executor for the blocks (see vggt.streaming); None runs their forward.
        self.block_runner: Callable[..., torch.Tensor] | None = None

    def checkpoint_activations(self, policy: str) -> None:
        """Checkpoint every block in training as `policy` says ("none", "blocks" or
        "selective"), the DINOv2 patch embedding's too."""
        self.checkpointing = check_policy(policy)
        if isinstance(self.patch_embed, vits.DinoVisionTransformer):
            self.patch_embed.checkpointing = policy

    def _build_patch_embed(
        self,
        name: str,
        img_size: int,
        patch_size: int,
        num_register_tokens: int,
        embed_dim: int,
    ) -> None:
        if "conv" in name:
            self.patch_embed = PatchEmbed(
                img_size=img_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim
            )
            return
        if name not in DINOV2_BACKBONES:
            choices = ["conv", *DINOV2_BACKBONES]
            raise ValueError(f"unknown patch_embed {name!r}; choose one of {choices}")
        self.patch_embed = DINOV2_BACKBONES[name](
            img_size=img_size,
            patch_size=patch_size,
            num_register_tokens=num_register_tokens,
            interpolate_antialias=True,
            interpolate_offset=0.0,
            block_chunks=0,
            init_values=1.0,
        )
        self.patch_embed.mask_token.requires_grad_(False)

    def embed(
        self, images: torch.Tensor, first_frame: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalise [B, S, 3, H, W] images; return tokens [B*S, P, C] and RoPE positions.

        `first_frame=False` when the images continue a sequence whose frame 0 is elsewhere.
        """
        check_images(images, self.patch_size)
        batch, frames, _, height, width = images.shape
        dtype = self.camera_token.dtype
        mean = torch.tensor(_RESNET_MEAN, device=images.device, dtype=dtype).view(1, 1, 3, 1, 1)
        std = torch.tensor(_RESNET_STD, device=images.device, dtype=dtype).view(1, 1, 3, 1, 1)
        # Normalised in the input's precision, then cast to the weights' dtype: float64 input
        # runs on float32 weights, and float32 input on cast bf16 weights without autocast.
        images = ((images - mean) / std).to(dtype)
        flat = images.view(batch * frames, 3, height, width)
        del images
        patch_tokens = self.patch_embed(flat)
        del flat
        if isinstance(patch_tokens, dict):
            patch_tokens = patch_tokens["x_norm_patchtokens"]
        camera = slice_expand_and_flatten(self.camera_token, batch, frames, first_frame)
        register = slice_expand_and_flatten(self.register_token, batch, frames, first_frame)
        # In the weights' dtype: CUDA autocast returns the patch embedding's final norm in
        # fp32, which would make the residual stream (and the kept layers) fp32 under cast
        # bf16 weights; with fp32 weights this is no cast.
        tokens = torch.cat((camera, register, patch_tokens.to(dtype)), dim=1)
        del patch_tokens
        if self.rope is None:
            return tokens, None
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        pos = self.position_getter(batch * frames, grid_h, grid_w, device=tokens.device)
        if self.patch_start_idx > 0:
            pos = pos + 1
            special = torch.zeros(
                batch * frames, self.patch_start_idx, 2, device=pos.device, dtype=pos.dtype
            )
            pos = torch.cat((special, pos), dim=1)
        return tokens, pos

    def run_block(
        self,
        attn_type: str,
        index: int,
        tokens: torch.Tensor,
        pos: torch.Tensor | None,
        shape: tuple[int, int, int, int],
    ) -> torch.Tensor:
        """Run frame or global block `index` on the residual stream; return it as [B, S, P, C].

        Without autograd it goes through `block_runner` when one is set (which may overwrite
        `tokens`); training checkpoints it as `checkpointing` says.
        """
        batch, frames, tokens_per_frame, dim = shape
        if attn_type == "frame":
            groups, length = batch * frames, tokens_per_frame
            block = self.frame_blocks[index]
        else:
            groups, length = batch, frames * tokens_per_frame
            block = self.global_blocks[index]
        tokens = tokens.reshape(groups, length, dim)
        if pos is not None:
            pos = pos.reshape(groups, length, 2)
        across_frames = attn_type == "global"
        if self.block_runner is not None and not torch.is_grad_enabled():
            tokens = self.block_runner(block, tokens, pos, across_frames)
        else:
            runner = self.block_runner
            forward = block if runner is None else runner.with_autograd(block, across_frames)
            policy = self.checkpointing if self.training else "none"
            tokens = run_checkpointed(policy, forward, tokens, pos=pos)
        return tokens.view(shape)

    def iter_blocks(
        self, tokens: torch.Tensor, pos: torch.Tensor | None, shape: tuple[int, int, int, int]
    ) -> Iterator[tuple[int, str, torch.Tensor]]:
        """Run every block in the alternating order; yield (layer, attention type, [B,S,P,C]).

        With a block runner that works in place, a yielded tensor is overwritten by the next
        block: copy what you keep.
        """
        for step in range(self.aa_block_num):
            for attn_type in self.aa_order:
                for offset in range(self.aa_block_size):
                    layer = step * self.aa_block_size + offset
                    tokens = self.run_block(attn_type, layer, tokens, pos, shape)
                    yield layer, attn_type, tokens

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        """images [B, S, 3, H, W] in [0, 1] -> (depth tensors [B, S, P, 2C], patch_start_idx)."""
        tokens, pos = self.embed(images)
        shape = (*images.shape[:2], *tokens.shape[1:])
        blocks = self.iter_blocks(tokens, pos, shape)
        del tokens
        halves: dict[int, dict[str, torch.Tensor]] = {}
        outputs = []
        for layer, attn_type, stream in blocks:
            halves.setdefault(layer, {})[attn_type] = stream
            if len(halves[layer]) == len(ATTENTION_TYPES):
                parts = halves.pop(layer)
                outputs.append(torch.cat([parts[kind] for kind in ATTENTION_TYPES], dim=-1))
        return outputs, self.patch_start_idx

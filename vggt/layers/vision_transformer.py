"""DINOv2 vision transformer with register tokens, used as VGGT's patch embedder."""

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from vggt.layers.attention import MemEffAttention
from vggt.layers.block import NestedTensorBlock
from vggt.layers.mlp import Mlp
from vggt.layers.patch_embed import PatchEmbed
from vggt.layers.swiglu_ffn import SwiGLUFFN, SwiGLUFFNFused
from vggt.training.checkpointing import run_checkpointed

FFN_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": Mlp,
    "swiglu": SwiGLUFFNFused,
    "swiglufused": SwiGLUFFNFused,
    "swiglu_unfused": SwiGLUFFN,
    "identity": lambda *args, **kwargs: nn.Identity(),
}


class BlockChunk(nn.ModuleList):
    """A run of blocks kept under one index; leading Identities keep global block indices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = block(x)
        return x


class DinoVisionTransformer(nn.Module):
    """ViT with cls and register tokens and interpolated absolute position embeddings."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ffn_bias: bool = True,
        proj_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        init_values: float | None = None,
        embed_layer: Callable[..., nn.Module] = PatchEmbed,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        block_fn: Callable[..., nn.Module] = NestedTensorBlock,
        ffn_layer: str = "mlp",
        block_chunks: int = 1,
        num_register_tokens: int = 0,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        if ffn_layer not in FFN_LAYERS:
            raise ValueError(f"unknown ffn_layer {ffn_layer!r}; choose from {sorted(FFN_LAYERS)}")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.num_features = self.embed_dim = embed_dim
        self.num_tokens = 1
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.chunked_blocks = block_chunks > 0

        self.patch_embed = embed_layer(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim
        )
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_tokens, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
            if num_register_tokens
            else None
        )
        if drop_path_uniform:
            rates = [drop_path_rate] * depth
        else:
            rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        blocks = [
            block_fn(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                drop_path=rates[i],
                norm_layer=norm_layer,
                act_layer=act_layer,
                ffn_layer=FFN_LAYERS[ffn_layer],
                init_values=init_values,
                qk_norm=qk_norm,
            )
            for i in range(depth)
        ]
        if self.chunked_blocks:
            size = depth // block_chunks
            blocks = [
                BlockChunk([nn.Identity()] * start + blocks[start : start + size])
                for start in range(0, depth, size)
            ]
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm_layer(embed_dim)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        # An inference executor for the blocks, e.g. the in-place streamed one of
        # vggt.streaming; None runs each block's own forward.
        self.block_runner: Callable[..., torch.Tensor] | None = None
        # What a training forward keeps for backward (vggt.training.checkpointing).
        self.checkpointing = "blocks"
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Resize the patch position embeddings to the token grid of an height x width image."""
        num_patches = x.shape[1] - 1
        stored = self.pos_embed.shape[1] - 1
        if num_patches == stored and height == width:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
        side = int(math.sqrt(stored))
        if side * side != stored:
            raise ValueError(f"stored position embedding of {stored} patches is not square")
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = (
                (grid_h + self.interpolate_offset) / side,
                (grid_w + self.interpolate_offset) / side,
            )
            grid = F.interpolate(
                grid, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias
            )
        else:
            grid = F.interpolate(
                grid, size=(grid_h, grid_w), mode="bicubic", antialias=self.interpolate_antialias
            )
        if grid.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(f"interpolated grid {tuple(grid.shape[-2:])} != {grid_h}x{grid_w}")
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((cls_pos, patch_pos), dim=1).to(x.dtype)

    def prepare_tokens_with_masks(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Patch-embed, prepend cls, add position embeddings, insert register tokens."""
        batch, _, height, width = x.shape
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(batch, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, height, width)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(batch, -1, -1), x[:, 1:]), dim=1)
        return x

    def forward_features(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        """Run all blocks and return the normalised cls, register and patch tokens."""
        x = self.prepare_tokens_with_masks(x, masks)
        runner = None if self.chunked_blocks or torch.is_grad_enabled() else self.block_runner
        for block in self.blocks:
            if runner is not None:
                x = runner(block, x, None)
            elif self.training:
                x = run_checkpointed(self.checkpointing, block, x)
            else:
                x = block(x)
        x_norm = self.norm(x)
        first_patch = 1 + self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1:first_patch],
            "x_norm_patchtokens": x_norm[:, first_patch:],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward(
        self, x: torch.Tensor, masks: torch.Tensor | None = None, is_training: bool = True
    ) -> dict[str, torch.Tensor | None] | torch.Tensor:
        features = self.forward_features(x, masks)
        return features if is_training else self.head(features["x_norm_clstoken"])


def _vit(
    embed_dim: int, depth: int, num_heads: int, patch_size: int, num_register_tokens: int, **kwargs
) -> DinoVisionTransformer:
    return DinoVisionTransformer(
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4,
        block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
        num_register_tokens=num_register_tokens,
        **kwargs,
    )


def vit_small(
    patch_size: int = 16, num_register_tokens: int = 0, **kwargs
) -> DinoVisionTransformer:
    """ViT-S: width 384, 12 blocks, 6 heads."""
    return _vit(384, 12, 6, patch_size, num_register_tokens, **kwargs)


def vit_base(patch_size: int = 16, num_register_tokens: int = 0, **kwargs) -> DinoVisionTransformer:
    """ViT-B: width 768, 12 blocks, 12 heads."""
    return _vit(768, 12, 12, patch_size, num_register_tokens, **kwargs)


def vit_large(
    patch_size: int = 16, num_register_tokens: int = 0, **kwargs
) -> DinoVisionTransformer:
    """ViT-L: width 1024, 24 blocks, 16 heads."""
    return _vit(1024, 24, 16, patch_size, num_register_tokens, **kwargs)


def vit_giant2(
    patch_size: int = 16, num_register_tokens: int = 0, **kwargs
) -> DinoVisionTransformer:
    """ViT-g/2: width 1536, 40 blocks, 24 heads."""
    return _vit(1536, 40, 24, patch_size, num_register_tokens, **kwargs)

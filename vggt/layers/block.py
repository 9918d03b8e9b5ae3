"""Pre-norm transformer block: attention and MLP residual branches with layer scale."""

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vggt.layers.attention import Attention
from vggt.layers.drop_path import DropPath
from vggt.layers.layer_scale import LayerScale
from vggt.layers.mlp import Mlp


class Block(nn.Module):
    """x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: float | None = None,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        attn_class: Callable[..., nn.Module] = Attention,
        ffn_layer: Callable[..., nn.Module] = Mlp,
        qk_norm: bool = False,
        fused_attn: bool = True,
        rope: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_class(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            qk_norm=qk_norm,
            fused_attn=fused_attn,
            rope=rope,
        )
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = ffn_layer(
            in_features=dim,
            hidden_features=int(dim * mlp_ratio),
            act_layer=act_layer,
            drop=drop,
            bias=ffn_bias,
        )
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor | None = None, inplace: bool = False
    ) -> torch.Tensor:
        """With `inplace` and autograd off, the residual branches are added into `x` itself and
        RoPE and the MLP activation overwrite their inputs: same values, fewer large buffers."""
        inplace = inplace and not torch.is_grad_enabled()
        kwargs = {} if pos is None else {"pos": pos, "inplace": inplace}
        attn_branch = self.drop_path1(self.ls1(self.attn(self.norm1(x), **kwargs)))
        x = x.add_(attn_branch) if inplace else x + attn_branch
        del attn_branch
        if inplace and isinstance(self.mlp, Mlp):
            mlp_branch = self.mlp(self.norm2(x), inplace=True)
        else:
            mlp_branch = self.mlp(self.norm2(x))
        mlp_branch = self.drop_path2(self.ls2(mlp_branch))
        return x.add_(mlp_branch) if inplace else x + mlp_branch


class NestedTensorBlock(Block):
    """The DINOv2 block class; only plain tensors are supported (lists need xFormers)."""

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor | None = None, inplace: bool = False
    ) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError("NestedTensorBlock takes a tensor; nested lists need xFormers")
        return super().forward(x, pos, inplace)


def chunk_bounds(length: int, chunk: int) -> Iterator[tuple[int, int]]:
    """(start, end) of near-equal consecutive chunks of at most `chunk` items over range(length)."""
    count = -(-length // chunk)
    size = -(-length // count)
    for start in range(0, length, size):
        yield start, min(start + size, length)


def block_forward_chunked_(
    block: Block, x: torch.Tensor, pos: torch.Tensor | None, chunk_tokens: int, stream: bool
) -> torch.Tensor:
    """Run `block` on x [G, N, C] in place, about `chunk_tokens` tokens at a time.

    Groups (frames, or sequences) are processed a few at a time; with `stream`, a group longer
    than `chunk_tokens` has its K and V built chunk by chunk and its queries and MLP run chunk
    by chunk, so qkv, attention output and MLP hidden state never cover the whole group.
    Same math as `block(x, pos)`; autograd must be off.
    """
    if torch.is_grad_enabled():
        raise RuntimeError("chunked block execution works in place and needs autograd off")
    groups, tokens, _ = x.shape
    if stream and tokens > chunk_tokens:
        for group in range(groups):
            part_pos = None if pos is None else pos[group : group + 1]
            _stream_group_(block, x[group : group + 1], part_pos, chunk_tokens)
        return x
    for start, end in chunk_bounds(groups, max(1, chunk_tokens // tokens)):
        part_pos = None if pos is None else pos[start:end]
        block(x[start:end], pos=part_pos, inplace=True)
    return x


def _stream_group_(
    block: Block, x: torch.Tensor, pos: torch.Tensor | None, chunk_tokens: int
) -> None:
    """Token-streamed block on one group x [1, N, C]: K/V first, then queries and the MLP."""
    attn = block.attn
    _, tokens, dim = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    weight, bias = attn.qkv.weight, attn.qkv.bias
    rotate = attn.rope is not None and pos is not None
    keys = x.new_empty(1, heads, tokens, head_dim)
    values = x.new_empty(1, heads, tokens, head_dim)
    for start, end in chunk_bounds(tokens, chunk_tokens):
        kv_bias = None if bias is None else bias[dim:]
        kv = F.linear(block.norm1(x[:, start:end]), weight[dim:], kv_bias)
        k, v = kv.view(1, end - start, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        k = attn.k_norm(k)
        if rotate:
            k = attn.rope(k, pos[:, start:end], inplace=True)
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        del kv, k, v
    for start, end in chunk_bounds(tokens, chunk_tokens):
        rows = x[:, start:end]
        q_bias = None if bias is None else bias[:dim]
        q = F.linear(block.norm1(rows), weight[:dim], q_bias)
        q = attn.q_norm(q.view(1, end - start, heads, head_dim).transpose(1, 2))
        if rotate:
            q = attn.rope(q, pos[:, start:end], inplace=True)
        out = F.scaled_dot_product_attention(q, keys, values)
        del q
        out = attn.proj(out.transpose(1, 2).reshape(1, end - start, dim))
        rows.add_(block.ls1(out))
        del out
        if isinstance(block.mlp, Mlp):
            hidden = block.mlp(block.norm2(rows), inplace=True)
        else:
            hidden = block.mlp(block.norm2(rows))
        rows.add_(block.ls2(hidden))
        del hidden

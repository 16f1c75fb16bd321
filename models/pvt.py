"""PVT v1: Pyramid Vision Transformer (Wang et al., ICCV 2021, arXiv 2102.12122).

Read top to bottom: spatial-reduction attention -> transformer block -> stage (patch embedding,
position embedding, blocks) -> network -> variants (Table 1) -> registered builders -> official
checkpoint key mapping.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from models._init import trunc_normal_init
from models._registry import register_family

# PVT code: block and final norms use eps 1e-6; patch-embedding and SR norms keep the default 1e-5.
BLOCK_NORM_EPS = 1e-6


class SpatialReductionAttention(nn.Module):
    """SRA (§3.3): keys/values come from the map shrunk R times per side by a R×R stride-R conv + LN."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, fused_attn: bool = True):
        super().__init__()
        self.fused_attn = fused_attn
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(B, N, heads, C // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            kv_src = x.transpose(1, 2).reshape(B, C, *hw)
            kv_src = self.norm(self.sr(kv_src).flatten(2).transpose(1, 2))
        else:
            kv_src = x
        k, v = self.kv(kv_src).reshape(B, -1, 2, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        else:  # the official code's explicit softmax(q kᵀ / sqrt(d)) v; same result, kept as a benchmark baseline
            attn = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = F.dropout(attn, self.attn_drop, self.training) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    """Pre-norm transformer encoder layer with SRA (§3.3, Fig. 3)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, fused_attn: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio, qkv_bias, attn_drop, drop, fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping P×P patches, linear projection, then LayerNorm (the LN is in the official code)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        hw = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (hw[0], hw[1])


class Stage(nn.Module):
    """One pyramid stage: patch embedding, learned position embedding, L_i encoder layers."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, grid: int, depth: int, num_heads: int,
                 mlp_ratio: float, sr_ratio: int, drop_path: list[float], drop: float, attn_drop: float,
                 extra_tokens: int = 0, fused_attn: bool = True):
        super().__init__()
        self.grid = grid
        self.extra_tokens = extra_tokens
        self.patch_embed = PatchEmbed(patch_size, in_chans, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, extra_tokens + grid * grid, dim))
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, sr_ratio, True, drop, attn_drop, dp, fused_attn) for dp in drop_path)

    def position_embedding(self, hw: tuple[int, int]) -> torch.Tensor:
        """The grid part of pos_embed, bilinearly resized when the input is not the pretraining size.

        A departure kept on purpose: whai362/PVT detection/pvt.py skips the resize whenever a stage's token count
        equals stage 1's (3136, e.g. a 196x256 input at stride 16), adding an embedding laid out for 56x56 to a
        196x256 grid; this resizes whenever the grid differs, so outputs equal the official code's at every
        input size except those."""
        pos = self.pos_embed[:, self.extra_tokens:]
        if hw == (self.grid, self.grid):
            return pos
        pos = pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=hw, mode="bilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, cls_token: torch.Tensor | None = None):
        x, hw = self.patch_embed(x)
        pos = self.position_embedding(hw)
        if cls_token is not None:
            x = torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            pos = torch.cat([self.pos_embed[:, : self.extra_tokens], pos], dim=1)
        x = self.pos_drop(x + pos)
        for blk in self.blocks:
            x = blk(x, hw)
        return x, hw


@dataclass(frozen=True)
class PVTVariant:
    depths: tuple[int, int, int, int]
    # PVT Table 1: identical for all four sizes.
    embed_dims: tuple[int, ...] = (64, 128, 320, 512)
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: tuple[int, ...] = (8, 8, 4, 4)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    patch_sizes: tuple[int, ...] = (4, 2, 2, 2)


def feature_info(variant: PVTVariant) -> list[dict]:
    """The four stage maps F1..F4 (res2..res5) at the strides of the patch embeddings (4/8/16/32)."""
    strides = [math.prod(variant.patch_sizes[:i + 1]) for i in range(len(variant.depths))]
    return [dict(num_chs=variant.embed_dims[i], reduction=strides[i], module=f"stages.{i}", name=f"res{i + 2}")
            for i in range(len(variant.depths))]


class PyramidVisionTransformer(nn.Module):
    """Classification: cls token joined at stage 4, final LN, linear head on token 0 (§4.1).
    Dense (`features_only=True`): the four stage maps F1..F4 at strides 4/8/16/32, no cls/norm/head."""

    def __init__(self, variant: PVTVariant, num_classes: int = 1000, features_only: bool = False,
                 img_size: int = 224, in_chans: int = 3, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, fused_attn: bool = True):
        super().__init__()
        self.features_only = features_only
        self.num_classes = num_classes
        self.img_size = (img_size, img_size)
        # Stochastic depth grows linearly from 0 to drop_path_rate over all blocks.
        dpr = torch.linspace(0, drop_path_rate, sum(variant.depths)).tolist()
        stages, chans, stride, start = [], in_chans, 1, 0
        self.feature_info = feature_info(variant)
        for i, depth in enumerate(variant.depths):
            stride *= variant.patch_sizes[i]
            last = i == len(variant.depths) - 1
            stages.append(Stage(
                chans, variant.embed_dims[i], variant.patch_sizes[i], img_size // stride, depth,
                variant.num_heads[i], variant.mlp_ratios[i], variant.sr_ratios[i], dpr[start:start + depth],
                drop_rate, attn_drop_rate, extra_tokens=1 if last else 0, fused_attn=fused_attn))
            chans, start = variant.embed_dims[i], start + depth
        self.stages = nn.ModuleList(stages)
        self.num_features = chans
        if not features_only:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, chans))
            self.norm = nn.LayerNorm(chans, eps=BLOCK_NORM_EPS)
            self.head = nn.Linear(chans, num_classes) if num_classes > 0 else nn.Identity()
            trunc_normal_(self.cls_token, std=0.02)
        for stage in self.stages:
            trunc_normal_(stage.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # PVT code: trunc-normal(.02) Linear weights, zero biases, unit LN; convs keep PyTorch's default.
        trunc_normal_init(m)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        names = {f"stages.{i}.pos_embed" for i in range(len(self.stages))}
        return names if self.features_only else names | {"cls_token"}

    def forward_dense(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, stage in enumerate(self.stages):
            x, hw = stage(x)
            if stage.extra_tokens and x.shape[1] > hw[0] * hw[1]:
                x = x[:, stage.extra_tokens:]
            x = x.transpose(1, 2).reshape(x.shape[0], -1, *hw)
            feats.append(x)
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            if i < last:
                x, hw = stage(x)
                x = x.transpose(1, 2).reshape(x.shape[0], -1, *hw)
            else:
                x, _ = stage(x, cls_token=self.cls_token)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_dense(x)
        return self.forward_head(self.forward_features(x))


# PVT Table 1: depths L_i per variant; everything else is shared.
VARIANTS = {
    "pvt_tiny": PVTVariant(depths=(2, 2, 2, 2)),
    "pvt_small": PVTVariant(depths=(3, 4, 6, 3)),
    "pvt_medium": PVTVariant(depths=(3, 4, 18, 3)),
    "pvt_large": PVTVariant(depths=(3, 8, 27, 3)),
}


def checkpoint_filter_fn(state_dict: dict, model: PyramidVisionTransformer) -> dict:
    """Map the official PVT layout (classification, or a detection/segmentation `backbone.`) to ours."""
    out = {}
    for key, value in state_dict.items():
        if model.features_only and (key == "cls_token" or key.startswith(("norm.", "head."))):
            continue
        if (m := re.fullmatch(r"pos_embed(\d)", key)) is not None:
            key = f"stages.{int(m.group(1)) - 1}.pos_embed"
        elif (m := re.fullmatch(r"patch_embed(\d)\.(.+)", key)) is not None:
            key = f"stages.{int(m.group(1)) - 1}.patch_embed.{m.group(2)}"
        elif (m := re.fullmatch(r"block(\d)\.(\d+)\.(.+)", key)) is not None:
            key = f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.{m.group(3)}"
        out[key] = value
    return out


register_family(__name__, VARIANTS, checkpoint_filter_fn, feature_info, network=PyramidVisionTransformer)

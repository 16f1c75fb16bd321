"""PatchConvNet: convolutional networks with attention-based aggregation (Touvron et al., arXiv 2112.13692).

Read top to bottom: attention-based pooling (learned aggregation) -> pooling block -> convolutional stem ->
trunk block -> network -> the multi-class-token variant -> ResNet-50 with attention pooling -> variants ->
registered builders -> official checkpoint key mapping. Architecture numbers come from the official code
(reference notes patchconvnet.md §A); the paper's tables were not available.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models._efficientnet_blocks import SqueezeExcite
from torch import nn

from models._init import trunc_normal_init
from models._registry import register_family
from models.botnet import VARIANTS as RESNET_VARIANTS
from models.botnet import ResNet, ResNetVariant
from models.botnet import feature_info as resnet_feature_info
from models.botnet import checkpoint_filter_fn as resnet_filter

LN_EPS = 1e-6  # official code: LayerNorm(eps=1e-6) everywhere


class LearnedAggregation(nn.Module):
    """Attention-based pooling (§A.3): the class queries attend over the keys (for one class token: itself and
    every patch; for per-class tokens: the patches only), one head, scale D^-0.5, q/k/v/proj with bias.
    `last_attention` keeps the softmax weights of the latest forward for visualisation."""

    def __init__(self, dim: int, num_queries: int = 1, num_heads: int = 1):
        super().__init__()
        self.num_heads, self.num_queries = num_heads, num_queries
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        heads, nq = self.num_heads, self.num_queries
        keys = x if nq == 1 else x[:, nq:]
        q = self.q(x[:, :nq]).reshape(B, nq, heads, C // heads).transpose(1, 2)
        k = self.k(keys).reshape(B, keys.shape[1], heads, C // heads).transpose(1, 2)
        v = self.v(keys).reshape(B, keys.shape[1], heads, C // heads).transpose(1, 2)
        attn = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        self.last_attention = attn.detach()
        return self.proj((attn @ v).transpose(1, 2).reshape(B, nq, C))


class PoolingBlock(nn.Module):
    """cls = cls + γ1·Aggregation(LN([cls, x])); cls = cls + γ2·MLP(LN(cls)), MLP ratio 3 (§A.3)."""

    def __init__(self, dim: int, layer_scale: float, num_queries: int = 1, mlp_ratio: float = 3.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = LearnedAggregation(dim, num_queries)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1 = nn.Parameter(layer_scale * torch.ones(dim))
        self.gamma_2 = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        cls = cls + self.gamma_1 * self.attn(self.norm1(torch.cat([cls, x], dim=1)))
        return cls + self.gamma_2 * self.mlp(self.norm2(cls))


class AttentionPooled:
    """The attention-pooling head over a trunk's (B, D, H, W) map from `forward_trunk`: class token(s), one
    pooling block, LN. Shared by PatchConvNet and the ResNet-50 that pools the same way."""

    def _build_pooling(self, dim: int, layer_scale: float, num_queries: int = 1) -> None:
        self.cls_token = nn.Parameter(torch.zeros(1, num_queries, dim))
        trunc_normal_(self.cls_token, std=0.02)
        self.blocks_token_only = nn.ModuleList([PoolingBlock(dim, layer_scale, num_queries)])
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The class token(s) after pooling and the final LN: (B, num_queries, D)."""
        tokens = self.forward_trunk(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        for block in self.blocks_token_only:
            cls = block(tokens, cls)
        return self.norm(torch.cat([cls, tokens], dim=1))[:, : cls.shape[1]]

    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Attention-pooling weights of each class query over the keys, (B, num_queries, keys): with one class
        token the keys are [cls, patches in raster order]; with per-class tokens, the patches only. Each row
        sums to 1. Reshape the patch part to (H/16, W/16) to view it."""
        self.forward_pooled(x)
        return self.blocks_token_only[-1].attn.last_attention.mean(1)


class ConvStem(nn.Module):
    """Four 3×3 stride-2 convs without bias or norm, GELU between them: 3 -> D/8 -> D/4 -> D/2 -> D (§A.1)."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        chs = [in_chans, dim // 8, dim // 4, dim // 2, dim]
        layers: list[nn.Module] = []
        for i in range(4):
            layers.append(nn.Sequential(nn.Conv2d(chs[i], chs[i + 1], 3, 2, 1, bias=False)))
            if i < 3:
                layers.append(nn.GELU())
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ConvBlock(nn.Module):
    """Trunk block (§A.2): x + DropPath(γ·f(LN(x))), f = 1×1 -> GELU -> depthwise 3×3 -> GELU -> SE(1/4) -> 1×1.
    The map stays (B, C, H, W); LN normalises channels. Non-square inputs are supported (the official code
    assumes H = W)."""

    def __init__(self, dim: int, layer_scale: float, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = nn.Module()
        self.attn.qkv_pos = nn.Sequential(
            nn.Conv2d(dim, dim, 1), nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(),
            SqueezeExcite(dim, rd_ratio=0.25),
            nn.Conv2d(dim, dim, 1))
        self.gamma_1 = nn.Parameter(layer_scale * torch.ones(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.drop_path(self.gamma_1[:, None, None] * self.attn.qkv_pos(y))


@dataclass(frozen=True)
class PatchConvNetVariant:
    dim: int
    depth: int
    # Layer-scale init (§A.2): the official S60 builder keeps the default 1e-4, every other builder passes 1e-6.
    layer_scale: float = 1e-6
    num_queries: int = 1


def feature_info(variant) -> list[dict]:
    """Dense mode: the trunk after each quarter of its depth, rescaled to strides 4/8/16/32 (res2..res5); the
    attention-pooling ResNet-50: ResNet's c2..c5."""
    if isinstance(variant, ResNetVariant):
        return resnet_feature_info(variant)
    return [dict(num_chs=variant.dim, reduction=r, module=f"fpn{i + 1}", name=f"res{i + 2}")
            for i, r in enumerate((4, 8, 16, 32))]


class PatchConvNet(AttentionPooled, nn.Module):
    """Columnar convnet on 16×16 patches (stride 16 throughout) + one attention-pooling block + LN + linear head.

    Dense mode (detection/segmentation; not in the official code, the paper's detection setup was not available):
    the trunk after each quarter of its depth, rescaled to strides 4/8/16/32 by 2×2 transposed convs and max
    pooling, as in the same authors' XCiT detection backbone."""

    def __init__(self, variant: PatchConvNetVariant, num_classes: int = 1000, features_only: bool = False,
                 drop_path_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        dim = variant.dim
        self.features_only = features_only
        self.num_classes = num_classes
        self.num_features = dim
        self.patch_embed = ConvStem(in_chans, dim)
        # Drop path is constant over depth in the official code (dpr_constant=True).
        self.blocks = nn.ModuleList(ConvBlock(dim, variant.layer_scale, drop_path_rate) for _ in range(variant.depth))
        if features_only:
            self.out_indices = [variant.depth * (i + 1) // 4 - 1 for i in range(4)]
            self.fpn1 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2), nn.BatchNorm2d(dim), nn.GELU(),
                                      nn.ConvTranspose2d(dim, dim, 2, 2))
            self.fpn2 = nn.ConvTranspose2d(dim, dim, 2, 2)
            self.fpn3 = nn.Identity()
            self.fpn4 = nn.MaxPool2d(2, 2)
            self.new_layers = ("fpn1.", "fpn2.")  # not in ImageNet checkpoints: kept at their init
            self.feature_info = feature_info(variant)
        else:
            self._build_pooling(dim, variant.layer_scale, variant.num_queries)
            self._build_head(num_classes)
            self.feature_info = [dict(num_chs=dim, reduction=16, module="blocks", name="trunk")]
        self.apply(trunc_normal_init)  # official init; convs keep PyTorch's default

    def _build_head(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward_dense(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.out_indices:
                taps.append(x)
        return [fpn(t) for fpn, t in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), taps)]

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(pooled[:, 0])

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_dense(x)
        return self.forward_head(self.forward_pooled(x))


class ClassHeads(nn.Module):
    """One Linear(D, 1) per class token (the official multi-token head); applied as one batched product."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, 1) for _ in range(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.cat([h.weight for h in self.heads])
        bias = torch.cat([h.bias for h in self.heads])
        return (x * weight).sum(-1) + bias


class PatchConvNetMulti(PatchConvNet):
    """S60 with one class token per class (official `S60_multi`): class c's token pools the patches and its own
    head gives logit c, so `attention_maps` gives one map per class."""

    def __init__(self, variant: PatchConvNetVariant, num_classes: int = 1000, **kwargs):
        super().__init__(PatchConvNetVariant(variant.dim, variant.depth, variant.layer_scale, num_classes),
                         num_classes, **kwargs)

    def _build_head(self, num_classes: int) -> None:
        self.head = ClassHeads(self.num_features, num_classes)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(pooled)


class ResNetAttentionPooling(AttentionPooled, ResNet):
    """ResNet-50 whose global average pooling is replaced by the PatchConvNet pooling block on the 2048-channel
    c5 tokens (one class token, one head, MLP ratio 3), then LN and the linear head."""

    def __init__(self, variant, num_classes: int = 1000, features_only: bool = False, layer_scale: float = 1e-6,
                 **kwargs):
        super().__init__(variant, num_classes, features_only, **kwargs)
        if not features_only:
            self._build_pooling(self.num_features, layer_scale)
            for m in (self.blocks_token_only, self.fc):
                m.apply(trunc_normal_init)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"cls_token"}

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_dense(x)[-1]

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_dense(x)
        return self.fc(self.forward_pooled(x)[:, 0])


VARIANTS = {
    # patchconvnet.md §A (official builders): width D and depth per model; patch size 16, SE ratio 1/4.
    "patchconvnet_s60": (PatchConvNet, PatchConvNetVariant(384, 60, layer_scale=1e-4)),
    "patchconvnet_s120": (PatchConvNet, PatchConvNetVariant(384, 120)),
    "patchconvnet_b60": (PatchConvNet, PatchConvNetVariant(768, 60)),
    "patchconvnet_b120": (PatchConvNet, PatchConvNetVariant(768, 120)),
    "patchconvnet_l60": (PatchConvNet, PatchConvNetVariant(1024, 60)),
    "patchconvnet_l120": (PatchConvNet, PatchConvNetVariant(1024, 120)),
    "patchconvnet_s60_multi": (PatchConvNetMulti, PatchConvNetVariant(384, 60, layer_scale=1e-4)),
    # The pooling block on ResNet-50's c5 in place of average pooling; layer-scale init 1e-6 (assumed: the
    # official code's value for every PatchConvNet but S60).
    "resnet50_attnpool": (ResNetAttentionPooling, RESNET_VARIANTS["resnet50_baseline"]),
}


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official PatchConvNet checkpoints (`patch_embed.proj.{0,2,4,6}.0`, `blocks.{i}.attn.qkv_pos`,
    `blocks_token_only`, multi-token `head.{c}`). A dense model takes the trunk; the loader keeps its new
    rescaling layers (`new_layers`) at their init, as detection fine-tuning from ImageNet weights does."""
    if isinstance(model, ResNet):
        pooling = {k: v for k, v in state_dict.items() if k.startswith(("cls_token", "blocks_token_only.", "norm."))}
        trunk = resnet_filter({k: v for k, v in state_dict.items() if k not in pooling}, model)
        return {**trunk, **({} if model.features_only else pooling)}
    out = {}
    for key, value in state_dict.items():
        if model.features_only and key.startswith(("cls_token", "blocks_token_only.", "norm.", "head.")):
            continue
        if (m := re.fullmatch(r"head\.(\d+)\.(weight|bias)", key)) is not None:
            key = f"head.heads.{m.group(1)}.{m.group(2)}"
        out[key] = value
    return out


register_family(__name__, VARIANTS, checkpoint_filter_fn, feature_info)

"""LVT: Lite Vision Transformer with enhanced self-attention (Yang et al., CVPR 2022, arXiv 2112.10809).

Read top to bottom: convolutional self-attention (CSA, stage 1) -> recursive atrous self-attention (RASA,
stages 2-4) -> block -> stage -> network -> the released classifier `lvt_cls` (class attention + token-labelling
head) -> variants -> registered builders -> official checkpoint key mapping. Every architecture number comes
from the official code (reference notes lvt.md §A); the paper's tables were not available.
Tokens stay channels-last, (B, H, W, C), between blocks, as in the official code.
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


class CSA(nn.Module):
    """Convolutional self-attention (lvt.md §A): for every k×k window (stride 2, padding 1) the k²×k² attention
    is predicted from the 2×2-average-pooled input by a linear layer (not from q·kᵀ); values are the unfolded
    window mapped by a separate C→C linear per kernel position (a 1×1 conv with k² groups); the weighted windows
    are folded back to H×W with overlaps summed."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 3, stride: int = 2, padding: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.k2 = kernel_size * kernel_size
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.scale = (dim // num_heads) ** -0.5
        self.attn = nn.Linear(dim, self.k2 * self.k2 * num_heads)
        self.weight = nn.Conv2d(self.k2 * dim, self.k2 * dim, 1, groups=self.k2, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        heads, k2 = self.num_heads, self.k2
        x_nchw = x.permute(0, 3, 1, 2)
        pooled = self.pool(x_nchw)
        h, w = pooled.shape[-2:]
        attn = self.attn(pooled.permute(0, 2, 3, 1)).reshape(B, h * w, heads, k2, k2).permute(0, 2, 1, 3, 4)
        attn = (attn * self.scale).softmax(dim=-1)
        v = F.unfold(x_nchw, self.kernel_size, padding=self.padding, stride=self.stride)  # (B, C·k², h·w)
        v = v.reshape(B, C, k2, h * w).permute(0, 3, 2, 1).reshape(B * h * w, k2 * C, 1, 1)
        v = self.weight(v).reshape(B, h * w, k2, heads, C // heads).permute(0, 3, 1, 2, 4)
        out = (attn @ v).permute(0, 1, 4, 3, 2).reshape(B, C * k2, h * w)
        out = F.fold(out, (H, W), self.kernel_size, padding=self.padding, stride=self.stride)
        return self.proj(out.permute(0, 2, 3, 1))


class AtrousDepthwise(nn.Module):
    """RASA's query branch: one depthwise 3×3 kernel shared by the atrous rates 1, 3, 5, each branch through
    SiLU, the branches summed (self-calibrated weighting; lvt.md §A, `ds_conv2d`)."""

    def __init__(self, dim: int, rates: tuple[int, ...] = (1, 3, 5)):
        super().__init__()
        self.rates = rates
        self.weight = nn.Parameter(torch.empty(dim, 1, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(F.silu(F.conv2d(x, self.weight, padding=r, dilation=r, groups=x.shape[1])) for r in self.rates)


class RASA(nn.Module):
    """Recursive atrous self-attention (lvt.md §A): PVT-style spatial-reduction attention whose queries pass the
    atrous depthwise branch; applied twice with shared weights, SiLU as the activation: y1 = SiLU(A(x)),
    y2 = SiLU(A(y1 + x))."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, recursions: int = 2, fused_attn: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.recursions = recursions
        self.fused_attn = fused_attn
        self.q = nn.Linear(dim, dim, bias=False)
        self.ds = AtrousDepthwise(dim)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        heads = self.num_heads
        q = self.ds(self.q(x).permute(0, 3, 1, 2))
        q = q.reshape(B, heads, C // heads, H * W).transpose(-1, -2)
        src = x
        if self.sr_ratio > 1:
            src = self.norm(self.sr(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        k, v = self.kv(src).reshape(B, -1, 2, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # the official code's explicit softmax(q kᵀ / sqrt(d)) v; same result, kept as a benchmark baseline
            out = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recursions == 1:
            return self.attention(x)
        y = F.silu(self.attention(x))
        for _ in range(self.recursions - 1):
            y = F.silu(self.attention(y + x))
        return y


class ConvMlp(nn.Module):
    """Stages 2-4 MLP: 1×1 conv -> depthwise 3×3 (bias) -> GELU -> 1×1 conv; the depthwise conv comes before the
    activation (lvt.md §A)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.depconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        return self.fc2(self.act(self.depconv(self.fc1(x)))).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm block: x + DropPath(Attn(LN(x))), x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sa: str, sr_ratio: int, drop_path: float,
                 fused_attn: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CSA(dim, num_heads) if sa == "csa" else RASA(dim, num_heads, sr_ratio, fused_attn=fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio) if sa == "csa" else ConvMlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: 7×7 stride 4 (stage 1) or 3×3 stride 2 conv, then LayerNorm."""

    def __init__(self, in_chans: int, dim: int, first: bool):
        super().__init__()
        k, s = (7, 4) if first else (3, 2)
        self.proj = nn.Conv2d(in_chans, dim, k, s, padding=k // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class Stage(nn.Module):
    def __init__(self, in_chans: int, dim: int, first: bool, blocks: list[Block]):
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans, dim, first)
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.patch_embed(x))


@dataclass(frozen=True)
class LVTVariant:
    # lvt.md §A (official `lvt_imagenet` config): one model size.
    depths: tuple[int, ...] = (2, 2, 2, 2)
    dims: tuple[int, ...] = (64, 64, 160, 256)
    heads: tuple[int, ...] = (2, 2, 5, 8)
    mlp_ratios: tuple[int, ...] = (4, 8, 4, 4)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    attentions: tuple[str, ...] = ("csa", "rasa", "rasa", "rasa")


def feature_info(variant: LVTVariant) -> list[dict]:
    """The four stage maps (res2..res5) at strides 4/8/16/32."""
    return [dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}", name=f"res{i + 2}")
            for i, dim in enumerate(variant.dims)]


class LVT(nn.Module):
    """Four stages (strides 4/8/16/32). Classification: LN on every token, mean pool, linear head (the official
    plain `lvt`: `head(norm(x).mean(...))`).
    Dense mode is the official detection/segmentation backbone: the four stage outputs without extra norms
    (its `downstream_norms` are Identity)."""

    def __init__(self, variant: LVTVariant, num_classes: int = 1000, features_only: bool = False,
                 drop_path_rate: float = 0.0, in_chans: int = 3, fused_attn: bool = True):
        super().__init__()
        self.features_only = features_only
        self.num_classes = num_classes
        total = sum(variant.depths)
        self.stages = nn.ModuleList()
        self.feature_info = feature_info(variant)
        start = 0
        for i, (depth, dim) in enumerate(zip(variant.depths, variant.dims)):
            # Official drop-path schedule: rate · global block index / (total blocks - 1).
            blocks = [Block(dim, variant.heads[i], variant.mlp_ratios[i], variant.attentions[i], variant.sr_ratios[i],
                            drop_path_rate * (start + j) / (total - 1), fused_attn) for j in range(depth)]
            self.stages.append(Stage(in_chans if i == 0 else variant.dims[i - 1], dim, i == 0, blocks))
            start += depth
        self.num_features = variant.dims[-1]
        if not features_only:
            self._build_head(num_classes)
        self.apply(self._init_weights)

    def _build_head(self, num_classes: int) -> None:
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Official init: trunc-normal(.02) linears, fan-out normal convs, zero biases.
        trunc_normal_init(m)
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs, channels-last (B, H, W, C)."""
        feats = []
        for stage in self.stages:
            x = stage(x if not feats else x.permute(0, 3, 1, 2))
            feats.append(x)
        return feats

    def forward_dense(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [f.permute(0, 3, 1, 2).contiguous() for f in self.forward_tokens(x)]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        # Chenglin-Yang/LVT classification/models/lvt.py: the norm is applied to each token before the mean.
        return self.head(self.norm(x).mean((1, 2)))

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_dense(x)
        return self.forward_head(self.forward_tokens(x)[-1])


class ClassAttention(nn.Module):
    """Class attention (the released classifier's VOLO-style post layers): the class token queries all tokens."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        heads = self.num_heads
        q = self.q(x[:, :1]).reshape(B, 1, heads, C // heads).transpose(1, 2)
        k, v = self.kv(x).reshape(B, N, 2, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, C))


class ClassBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, :1] + self.drop_path(self.attn(self.norm1(x)))
        cls = cls + self.drop_path(self.mlp(self.norm2(cls)))
        return torch.cat([cls, x[:, 1:]], dim=1)


class LVTClassifier(LVT):
    """The released ImageNet model `lvt_cls` (lvt.md §A): the backbone, a class token through two class-attention
    blocks (8 heads, MLP ratio 4), LN, a linear head on the class token and a token-labelling head on the patch
    tokens. Logits = cls + 0.5·max over tokens of the token logits, in training as at inference; `forward_heads`
    returns both heads for a token-labelling loss.

    Drop path: the official `lvt_cls` does not pass `drop_path_rate` on to its backbone, so the released model was
    trained with none (its README's `--drop-path 0.1` has no effect). Here `drop_path_rate` is honoured in the
    backbone and the class blocks alike; the recipes reproduce the release by setting it to 0."""

    def _build_head(self, num_classes: int) -> None:
        dim = self.num_features
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        trunc_normal_(self.cls_token, std=0.02)
        self.post_network = nn.ModuleList(ClassBlock(dim, 8) for _ in range(2))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.aux_head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.forward_tokens(x)[-1].flatten(1, 2)
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.post_network:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 0]), self.aux_head(x[:, 1:])

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_dense(x)
        cls, aux = self.forward_heads(x)
        return cls + 0.5 * aux.max(1).values


VARIANTS = {
    "lvt": (LVT, LVTVariant()),
    "lvt_cls": (LVTClassifier, LVTVariant()),
}


def checkpoint_filter_fn(state_dict: dict, model: LVT) -> dict:
    """Official layouts: classification (`backbone.{stage}.0` patch embedding, `backbone.{stage}.1.{block}`),
    and the detection/segmentation backbone (the same under one more `backbone.`; the loader strips the first)."""
    out = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"(?:backbone\.)?(\d)\.([01])\.(.+)", key)
        if m is not None:
            part = "patch_embed" if m.group(2) == "0" else "blocks"
            out[f"stages.{m.group(1)}.{part}.{m.group(3)}"] = value
        elif not model.features_only:
            out[key] = value
        elif not key.startswith(("cls_token", "post_network.", "norm.", "head.", "aux_head.")):
            out[key] = value  # anything else is reported as unexpected
    return out


register_family(__name__, VARIANTS, checkpoint_filter_fn, feature_info)

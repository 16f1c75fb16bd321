"""BoTNet: Bottleneck Transformers (Srinivas et al., CVPR 2021, arXiv 2101.11605), with its ResNet baselines.

Read top to bottom: MHSA with 2-D relative position logits -> BoT block (and the ResNet bottleneck, SE and
Non-Local blocks it is compared with) -> stage -> network -> variants -> registered builders -> checkpoint
key mapping.

Sources. The abstract documents the design: ResNet with the 3×3 convs of the final three bottleneck blocks
replaced by global multi-head self-attention. No official PyTorch code or weights exist; the authors'
TensorFlow gist is reflected by a faithful port (NZ99/bottleneck-transformer-flax). Details marked
[port] below come from that port and are reconstructions, not paper text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from models._registry import register_family


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def _resize_rel_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """A (2L-1, d) relative-position table for another map length L.

    Shorter maps use the centre of the table: the same relative offsets, so the result is exact. Longer maps
    interpolate the table linearly along the offset axis (a departure needed for detection inputs larger than
    the size the model was built for)."""
    n = 2 * length - 1
    if n == table.shape[0]:
        return table
    if n < table.shape[0]:
        start = (table.shape[0] - n) // 2
        return table[start:start + n]
    return F.interpolate(table.t()[None], size=n, mode="linear", align_corners=True)[0].t()


class RelPosEmbed2d(nn.Module):
    """Learned relative position tables for height and width, shared by all heads ([port]: init std d^-0.5)."""

    def __init__(self, feat_size: tuple[int, int], dim_head: int):
        super().__init__()
        h, w = feat_size
        self.height_rel = nn.Parameter(torch.randn(2 * h - 1, dim_head) * dim_head ** -0.5)
        self.width_rel = nn.Parameter(torch.randn(2 * w - 1, dim_head) * dim_head ** -0.5)

    @staticmethod
    def _logits_1d(q: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """q (..., L, d) · table -> (..., L, L): entry [i, j] is q_i · r_{j - i}."""
        length = q.shape[-2]
        rel = q @ table.t()  # (..., L, 2L-1), column c is offset c - (L - 1)
        idx = torch.arange(length, device=q.device)
        offsets = idx[None, :] - idx[:, None] + length - 1  # [i, j] -> column of offset j - i
        return rel.gather(-1, offsets.expand(*rel.shape[:-1], length))

    def forward(self, q: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """q (B, heads, H*W, d) -> position logits (B, heads, H*W, H*W) = q·r_h + q·r_w (AA-Net §3.2 split)."""
        h, w = hw
        B, heads, _, d = q.shape
        q = q.reshape(B, heads, h, w, d)
        lw = self._logits_1d(q, _resize_rel_table(self.width_rel, w))  # (B, h, H, W, W')
        lh = self._logits_1d(q.transpose(2, 3), _resize_rel_table(self.height_rel, h))  # (B, h, W, H, H')
        logits = lh.permute(0, 1, 3, 2, 4)[..., :, None] + lw[..., None, :]  # (B, h, H, W, H', W')
        return logits.reshape(B, heads, h * w, h * w)


class MHSA(nn.Module):
    """All-to-all multi-head self-attention over the feature map with relative position logits (Fig. 4).

    Logits are (q·kᵀ + q·rᵀ)/sqrt(d) ([port]: q is scaled before both terms; timm's BottleneckAttn leaves the
    position term unscaled by default). q, k and v are bias-free 1×1 convs ([port]), fused into one `qkv` conv;
    there is no output projection (Fig. 4). The position logits enter the fused attention as an additive mask.
    """

    def __init__(self, dim: int, feat_size: tuple[int, int], num_heads: int = 4, dim_head: int | None = None,
                 fused_attn: bool = True):
        super().__init__()
        self.fused_attn = fused_attn
        self.num_heads = num_heads
        self.dim_head = dim_head or dim // num_heads
        self.inner = self.num_heads * self.dim_head
        self.qkv = nn.Conv2d(dim, self.inner * 3, kernel_size=1, bias=False)
        self.pos_embed = RelPosEmbed2d(feat_size, self.dim_head)
        self.scale = self.dim_head ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        q, k, v = self.qkv(x).reshape(B, 3, self.num_heads, self.dim_head, H * W).transpose(-1, -2).unbind(1)
        pos = self.pos_embed(q, (H, W)) * self.scale
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=pos.to(q.dtype), scale=self.scale)
        else:  # explicit softmax, as the reference implementations compute it; a benchmark baseline
            out = ((q @ k.transpose(-2, -1)) * self.scale + pos).softmax(dim=-1) @ v
        return out.transpose(-1, -2).reshape(B, self.inner, H, W)


class SqueezeExcite(nn.Module):
    """SE on the block output ([port]: reduced width max(1, int(C·ratio)), biases, block activation, sigmoid)."""

    def __init__(self, channels: int, ratio: float, act_layer: type[nn.Module]):
        super().__init__()
        reduced = max(1, int(channels * ratio))
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


def _shortcut(in_chs: int, out_chs: int, stride: int, norm_layer, act_layer, act: bool) -> nn.Module | None:
    if stride == 1 and in_chs == out_chs:
        return None
    layers = [nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), norm_layer(out_chs)]
    if act:  # [port]: the T-series applies the block activation on the projection shortcut too
        layers.append(act_layer())
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """ResNet bottleneck (stride on the 3×3 conv, as in torchvision); optional SE before the residual sum."""

    expansion = 4

    def __init__(self, in_chs: int, width: int, stride: int = 1, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU,
                 se_ratio: float = 0.0, shortcut_act: bool = False, drop_path: float = 0.0, **spatial_kwargs):
        super().__init__()
        out_chs = width * self.expansion
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self._build_spatial(width, stride, **spatial_kwargs)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = norm_layer(out_chs)
        self.se = SqueezeExcite(out_chs, se_ratio, act_layer) if se_ratio else None
        self.act = act_layer()
        self.downsample = _shortcut(in_chs, out_chs, stride, norm_layer, act_layer, shortcut_act)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _build_spatial(self, width: int, stride: int, **_) -> None:
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.spatial(x)))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        x = self.drop_path(x)
        x += shortcut
        return self.act(x)


class BoTBlock(Bottleneck):
    """Bottleneck Transformer block: the bottleneck's 3×3 conv replaced by MHSA (abstract, Fig. 4), with BN and
    the three nonlinearities kept. When the block downsamples, MHSA runs at the input resolution and a 2×2
    average pool follows ([port]); no SE in BoT blocks ([port], paper §4.8.4 as quoted there)."""

    def __init__(self, in_chs: int, width: int, stride: int = 1, se_ratio: float = 0.0, **kwargs):
        super().__init__(in_chs, width, stride, se_ratio=0.0, **kwargs)

    def _build_spatial(self, width: int, stride: int, feat_size: tuple[int, int] = (14, 14), num_heads: int = 4,
                       fused_attn: bool = True, **_) -> None:
        self.attn = MHSA(width, feat_size, num_heads, fused_attn=fused_attn)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.attn(x))


class NonLocalBlock(nn.Module):
    """Non-local block, embedded-Gaussian form (Wang et al., CVPR 2018): θ/φ/g 1×1 convs to C/2, softmax(θᵀφ)
    over all positions, a 1×1 conv back to C with BN (γ = 0 at init), added to the input."""

    def __init__(self, channels: int, norm_layer=nn.BatchNorm2d, **_):
        super().__init__()
        inner = channels // 2
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        self.bn = norm_layer(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = (m(x).flatten(2).transpose(1, 2)[:, None] for m in (self.theta, self.phi, self.g))
        y = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # embedded Gaussian: no 1/sqrt(d)
        y = y[:, 0].transpose(1, 2).reshape(B, -1, H, W)
        return x + self.bn(self.out(y))


@dataclass(frozen=True)
class ResNetVariant:
    depths: tuple[int, int, int, int]
    # Which stages (2..5 = c2..c5) use BoT blocks in place of bottlenecks.
    bot_stages: tuple[int, ...] = ()
    stride_one_c5: bool = False
    se_ratio: float = 0.0
    act: str = "relu"
    shortcut_act: bool = False
    img_size: int = 224
    # Extra blocks inserted before the last block of a stage ("nonlocal" or "bot"), e.g. {4: "nonlocal"}.
    extra_blocks: dict[int, str] = field(default_factory=dict)


def feature_info(variant: ResNetVariant) -> list[dict]:
    """c2..c5 (res2..res5): 256 x 2^i channels at strides 4/8/16/32 (16 for a stride-1 c5)."""
    strides = (4, 8, 16, 16 if variant.stride_one_c5 else 32)
    return [dict(num_chs=256 * 2 ** i, reduction=strides[i], module=f"layer{i + 1}", name=f"res{i + 2}")
            for i in range(4)]


def _inplace(act: type[nn.Module]):
    return lambda: act(inplace=True)


_ACTS = {"relu": _inplace(nn.ReLU), "silu": _inplace(nn.SiLU)}


class ResNet(nn.Module):
    """Bottleneck ResNet (torchvision layout: conv1/bn1/layer1..4/fc) with BoT, SE and Non-Local options."""

    def __init__(self, variant: ResNetVariant, num_classes: int = 1000, features_only: bool = False,
                 img_size: int | tuple[int, int] | None = None, drop_path_rate: float = 0.0,
                 norm_layer=nn.BatchNorm2d, extra_blocks: dict | None = None, in_chans: int = 3,
                 fused_attn: bool = True):
        super().__init__()
        act_layer = _ACTS[variant.act]
        extra = {int(k): v for k, v in (extra_blocks if extra_blocks is not None else variant.extra_blocks).items()}
        self.features_only = features_only
        self.num_classes = num_classes
        self.img_size = _pair(img_size or variant.img_size)
        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.act = act_layer()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        dpr = torch.linspace(0, drop_path_rate, sum(variant.depths)).tolist()
        in_chs, stride_total, k = 64, 4, 0
        self.feature_info = feature_info(variant)
        for i, depth in enumerate(variant.depths):
            stage_id = i + 2
            width = 64 * 2 ** i
            stride = 1 if i == 0 or (stage_id == 5 and variant.stride_one_c5) else 2
            feat = tuple(s // stride_total for s in self.img_size)  # map size entering the stage
            blocks = []
            for j in range(depth):
                if j == depth - 1 and stage_id in extra:
                    blocks.append(self._extra_block(extra[stage_id], in_chs, width, norm_layer, act_layer, feat))
                bot = stage_id in variant.bot_stages
                cls = BoTBlock if bot else Bottleneck
                blocks.append(cls(in_chs, width, stride if j == 0 else 1, norm_layer=norm_layer, act_layer=act_layer,
                                  se_ratio=variant.se_ratio, shortcut_act=variant.shortcut_act, feat_size=feat,
                                  drop_path=dpr[k], fused_attn=fused_attn))
                if j == 0:
                    stride_total *= stride
                    feat = tuple(s // stride_total for s in self.img_size)
                in_chs, k = width * 4, k + 1
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_features = in_chs
        if not features_only:
            self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    @staticmethod
    def _extra_block(kind: str, chs: int, width: int, norm_layer, act_layer, feat) -> nn.Module:
        if kind == "nonlocal":
            return NonLocalBlock(chs, norm_layer=norm_layer)
        if kind == "bot":
            return BoTBlock(chs, width, 1, norm_layer=norm_layer, act_layer=act_layer, feat_size=feat)
        raise ValueError(f"unknown extra block {kind!r}; valid: nonlocal, bot")

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and not name.endswith(("se.fc1", "se.fc2")):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            # Zero-init the last BN of every residual branch ([port]; standard for long ResNet schedules).
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, NonLocalBlock):
                nn.init.zeros_(m.bn.weight)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith(("height_rel", "width_rel"))}

    def forward_dense(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        feats = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor):
        feats = self.forward_dense(x)
        if self.features_only:
            return feats
        return self.fc(F.adaptive_avg_pool2d(feats[-1], 1).flatten(1))


R50, R101, R152, R200 = (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3), (3, 24, 36, 3)
# T-series "S1" settings ([port] BoTNetConfig defaults): stride-1 c5, SE 0.0625 outside BoT blocks, SiLU,
# activation on projection shortcuts. Stage sizes as in the paper's Table 13 (NZ99 README).
_S1 = dict(bot_stages=(5,), stride_one_c5=True, se_ratio=0.0625, act="silu", shortcut_act=True)

VARIANTS = {
    # ResNet baselines: standard bottleneck ResNets (ResNet-200 stage sizes [3, 24, 36, 3]).
    "resnet50_baseline": ResNetVariant(R50),
    "resnet101_baseline": ResNetVariant(R101),
    "resnet152_baseline": ResNetVariant(R152),
    "resnet200_baseline": ResNetVariant(R200),
    # BoT50/101/152/200 (abstract: the final three bottleneck blocks, i.e. c5, use MHSA); relative tables are
    # sized for `img_size` (224 here; detection builds them for e.g. 1024 -> 64×64 then 32×32 maps).
    "botnet50": ResNetVariant(R50, bot_stages=(5,)),
    "botnet101": ResNetVariant(R101, bot_stages=(5,)),
    "botnet152": ResNetVariant(R152, bot_stages=(5,)),
    "botnet200": ResNetVariant(R200, bot_stages=(5,)),
    # BoT-S1-50: BoT50 with a stride-1 c5 (ImageNet table; 20.8M params as quoted by LeViT Table 4).
    "botnet_s1_50": ResNetVariant(R50, bot_stages=(5,), stride_one_c5=True),
    # T3..T7 = S1-59, S1-110, S1-128, S1-77, S1-128 at 224/224/256/320/384 (reference notes §G.3; secondary).
    "botnet_s1_59": ResNetVariant((3, 4, 6, 6), **_S1),
    "botnet_s1_77": ResNetVariant((3, 4, 6, 12), **_S1, img_size=320),
    "botnet_s1_110": ResNetVariant((3, 4, 23, 6), **_S1),
    "botnet_s1_128": ResNetVariant((3, 4, 23, 12), **_S1, img_size=256),
    # T7 is S1-128 at 384 (T5 is it at 256).
    "botnet_t7": ResNetVariant((3, 4, 23, 12), **_S1, img_size=384),
}
# The T-series names of the S1 models at their resolutions (T7 above has no S1 name of its own).
ALIASES = {"botnet_t3": "botnet_s1_59", "botnet_t4": "botnet_s1_110", "botnet_t5": "botnet_s1_128",
           "botnet_t6": "botnet_s1_77"}


def checkpoint_filter_fn(state_dict: dict, model: ResNet) -> dict:
    """Project checkpoints, torchvision/timm ResNet checkpoints (same key layout), and gist-style BoT weights
    (separate query/key/value convs, rel_pos_emb_h/w tables). Relative tables are resized to the model's map
    sizes (e.g. ImageNet 224 -> detection 1024). timm's BoTNet checkpoints are refused: their networks
    (tiered stems, attention in c3-c5, unscaled position logits) are not the paper's BoT models."""
    if any(".self_attn." in k for k in state_dict):
        raise KeyError("a timm byoanet BoTNet checkpoint: a different network from the paper's BoT models; "
                       "not convertible")
    out, expected = {}, model.state_dict()
    qkv_parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if model.features_only and key.startswith("fc."):
            continue
        if key.endswith((".query.weight", ".key.weight", ".value.weight")):
            base, part, _ = key.rsplit(".", 2)
            qkv_parts.setdefault(base, {})[part] = value
            continue
        key = key.replace(".rel_pos_emb_h", ".pos_embed.height_rel").replace(".rel_pos_emb_w", ".pos_embed.width_rel")
        if key.endswith(("height_rel", "width_rel")) and key in expected and value.shape != expected[key].shape:
            value = _resize_rel_table(value, (expected[key].shape[0] + 1) // 2)
        out[key] = value
    for base, parts in qkv_parts.items():
        out[f"{base}.qkv.weight"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


register_family(__name__, VARIANTS, checkpoint_filter_fn, feature_info, network=ResNet, aliases=ALIASES)

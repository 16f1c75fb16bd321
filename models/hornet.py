"""HorNet: recursive gated convolutions (Rao et al., NeurIPS 2022, arXiv 2207.14284).

Read top to bottom: global-local filter -> gnConv -> HorNet block -> network -> variants -> registered
builders -> official checkpoint key mapping. Module names follow the official code, so its checkpoints
load after dropping the `backbone.` prefix and the parts the mode does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from torch import nn

from models._init import trunc_normal_init
from models._registry import register_family

LN_EPS = 1e-6  # HorNet code: every LayerNorm uses eps 1e-6


class ElementwiseLayerNorm2d(nn.Module):
    """The official code's channels-first LayerNorm, written out elementwise (mean, variance, normalise, affine;
    ~10 kernels). Same parameters and result as `LayerNorm2d`; kept as the benchmark's same-run baseline."""

    def __init__(self, dim: int, eps: float = LN_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def norm2d(dim: int, fused: bool = True) -> nn.Module:
    """Channels-first LayerNorm: one fused layer_norm kernel (timm's LayerNorm2d), or the official elementwise one."""
    return LayerNorm2d(dim, eps=LN_EPS) if fused else ElementwiseLayerNorm2d(dim)


def resize_complex_weight(weight: torch.Tensor, grid) -> torch.Tensor:
    """Bilinear (align_corners) resize of a (C, h, w, 2) GF weight to another rfft2 grid (HorNet code)."""
    return F.interpolate(weight.permute(3, 0, 1, 2), size=tuple(grid), mode="bilinear",
                         align_corners=True).permute(1, 2, 3, 0)


class GlobalLocalFilter(nn.Module):
    """GF layer (HorNet code): pre-LN; half the channels through a depthwise 3×3, half through
    rfft2 (ortho) × a learnable complex weight (resized bilinearly when the FFT grid differs), in float32;
    the halves interleaved channel by channel; post-LN."""

    def __init__(self, dim: int, h: int, w: int, fused_norm: bool = True):
        super().__init__()
        self.dw = nn.Conv2d(dim // 2, dim // 2, 3, padding=1, bias=False, groups=dim // 2)
        self.complex_weight = nn.Parameter(torch.empty(dim // 2, h, w, 2))
        trunc_normal_(self.complex_weight, std=0.02)
        self.pre_norm = norm2d(dim, fused_norm)
        self.post_norm = norm2d(dim, fused_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x)
        local, glob = x.chunk(2, dim=1)
        local = self.dw(local)
        B, C, H, W = glob.shape
        spec = torch.fft.rfft2(glob.float(), dim=(2, 3), norm="ortho")
        weight = self.complex_weight
        if weight.shape[1:3] != spec.shape[2:4]:
            weight = resize_complex_weight(weight, spec.shape[2:4])
        glob = torch.fft.irfft2(spec * torch.view_as_complex(weight.contiguous()), s=(H, W), dim=(2, 3),
                                norm="ortho").to(local.dtype)
        x = torch.stack([local, glob], dim=2).reshape(B, 2 * C, H, W)
        return self.post_norm(x)


class GnConv(nn.Module):
    """Recursive gated convolution of order n (§3.1): channels split C/2^(n-1) ... C; proj_in to 2C, split into
    p0 and q; a depthwise 7×7 (with bias) or GF filter on q scaled by s = 1/3; then p_{k+1} = f_k(p_k) · q_k
    with 1×1 convs f_k; proj_out."""

    def __init__(self, dim: int, order: int, gf_size: tuple[int, int] | None = None, s: float = 1.0 / 3.0,
                 fused_norm: bool = True):
        super().__init__()
        self.order = order
        self.dims = [dim // 2 ** i for i in range(order)][::-1]
        self.scale = s
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        total = sum(self.dims)
        if gf_size is None:
            self.dwconv = nn.Conv2d(total, total, 7, padding=3, groups=total)
        else:
            self.dwconv = GlobalLocalFilter(total, *gf_size, fused_norm=fused_norm)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList(nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0, q = self.proj_in(x).split([self.dims[0], sum(self.dims)], dim=1)
        gates = (self.dwconv(q) * self.scale).split(self.dims, dim=1)
        x = p0 * gates[0]
        for pw, gate in zip(self.pws, gates[1:]):
            x = pw(x) * gate
        return self.proj_out(x)


class HorBlock(nn.Module):
    """x + γ1·gnConv(LN(x)), then x + γ2·MLP(LN(x)) with ratio 4 (channels-last linears); layer scale 1e-6."""

    def __init__(self, dim: int, order: int, gf_size=None, drop_path: float = 0.0, layer_scale: float = 1e-6,
                 fused_norm: bool = True):
        super().__init__()
        self.norm1 = norm2d(dim, fused_norm)
        self.gnconv = GnConv(dim, order, gf_size, fused_norm=fused_norm)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
        self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1[:, None, None] * self.gnconv(self.norm1(x)))
        y = x.permute(0, 2, 3, 1)
        y = self.gamma2 * self.pwconv2(self.act(self.pwconv1(self.norm2(y))))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


@dataclass(frozen=True)
class HorNetVariant:
    base_dim: int
    gf: bool = False
    img_size: int = 224
    # HorNet code: depths [2, 3, 18, 2] and gnConv orders [2, 3, 4, 5] for every released model.
    depths: tuple[int, ...] = (2, 3, 18, 2)
    orders: tuple[int, ...] = (2, 3, 4, 5)


def feature_info(variant: HorNetVariant) -> list[dict]:
    """The four stage maps (res2..res5) at strides 4/8/16/32, widths base x 1/2/4/8."""
    return [dict(num_chs=variant.base_dim * 2 ** i, reduction=4 * 2 ** i, module=f"stages.{i}", name=f"res{i + 2}")
            for i in range(len(variant.depths))]


class HorNet(nn.Module):
    """4-stage hierarchy: 4×4 stem + LN, LN + 2×2 downsampling, HorBlocks; GAP + LN + linear head.
    GF variants use the global-local filter in stages 3-4 only. Dense mode adds `norm0..norm3` on the outputs."""

    def __init__(self, variant: HorNetVariant, num_classes: int = 1000, features_only: bool = False,
                 img_size: int | None = None, drop_path_rate: float = 0.0, layer_scale: float = 1e-6,
                 in_chans: int = 3, fused_norm: bool = True):
        super().__init__()
        self.features_only = features_only
        self.num_classes = num_classes
        size = img_size or variant.img_size
        self.img_size = (size, size)
        dims = [variant.base_dim * 2 ** i for i in range(4)]
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, 4),
                                                              norm2d(dims[0], fused_norm))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(norm2d(dims[i], fused_norm),
                                                        nn.Conv2d(dims[i], dims[i + 1], 2, 2)))
        dpr = torch.linspace(0, drop_path_rate, sum(variant.depths)).tolist()
        self.stages = nn.ModuleList()
        self.feature_info = feature_info(variant)
        start = 0
        for i, depth in enumerate(variant.depths):
            grid = size // (4 * 2 ** i)
            gf_size = (grid, grid // 2 + 1) if variant.gf and i >= 2 else None  # rfft2 grid of the stage map
            self.stages.append(nn.Sequential(*(HorBlock(dims[i], variant.orders[i], gf_size, dpr[start + j],
                                                        layer_scale, fused_norm) for j in range(depth))))
            start += depth
        if features_only:
            for i, d in enumerate(dims):
                self.add_module(f"norm{i}", norm2d(d, fused_norm))
            # An ImageNet checkpoint has no output norms: the loader keeps them at their init (the official
            # detection/segmentation code loads classification weights non-strictly for this reason).
            self.new_layers = ("norm0.", "norm1.", "norm2.", "norm3.")
        else:
            self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
            self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        trunc_normal_init(m, (nn.Conv2d, nn.Linear))  # HorNet code: convs too

    def forward_dense(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            feats.append(getattr(self, f"norm{i}")(x) if self.features_only else x)
        return feats

    def forward(self, x: torch.Tensor):
        feats = self.forward_dense(x)
        if self.features_only:
            return feats
        return self.head(self.norm(feats[-1].mean((2, 3))))


VARIANTS = {
    # HorNet-T/S/B/L: base width 64/96/128/192 (HorNet code and README model zoo); GF at 384 for B and L.
    "hornet_tiny_7x7": HorNetVariant(64),
    "hornet_tiny_gf": HorNetVariant(64, gf=True),
    "hornet_small_7x7": HorNetVariant(96),
    "hornet_small_gf": HorNetVariant(96, gf=True),
    "hornet_base_7x7": HorNetVariant(128),
    "hornet_base_gf": HorNetVariant(128, gf=True),
    "hornet_base_gf_img384": HorNetVariant(128, gf=True, img_size=384),
    "hornet_large_7x7": HorNetVariant(192),
    "hornet_large_gf": HorNetVariant(192, gf=True),
    "hornet_large_gf_img384": HorNetVariant(192, gf=True, img_size=384),
}


def checkpoint_filter_fn(state_dict: dict, model: HorNet) -> dict:
    """Official classification checkpoints, and detection/segmentation backbones (`backbone.`, norm0..norm3)."""
    out = {}
    for key, value in state_dict.items():
        is_head = key.startswith(("head.", "norm."))
        is_out_norm = key.split(".")[0] in ("norm0", "norm1", "norm2", "norm3")
        if (model.features_only and is_head) or (not model.features_only and is_out_norm):
            continue
        out[key] = value
    # GF weights trained at another resolution are resized to this model's grid, as the filter itself does.
    for key, value in out.items():
        if key.endswith("complex_weight"):
            try:
                grid = model.get_parameter(key).shape[1:3]
            except AttributeError:  # not in this model: reported as unexpected
                continue
            if value.shape[1:3] != grid:
                out[key] = resize_complex_weight(value, grid)
    return out


register_family(__name__, VARIANTS, checkpoint_filter_fn, feature_info, network=HorNet)

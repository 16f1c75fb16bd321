"""Dense-prediction heads and necks the papers use that detectron2 does not ship, as detectron2 modules.

- `HorFPN`: detectron2's FPN with each 3×3 output conv replaced by an order-2 gnConv (7×7 or global-local
  filter), HorNet §4 / official `GNFPN` neck; a drop-in for `FPN` in any detectron2 detector.
- `UperNetHead`: UPerNet (pyramid pooling on the last map + FPN fusion), with the auxiliary FCN head on stage 3
  that HorNet's and PatchConvNet's ADE20K configs train with; a `sem_seg_head` for `SemanticSegmentor`.
- `SegFormerHead`: SegFormer's all-MLP decoder, LVT's ADE20K head; a `sem_seg_head` for `SemanticSegmentor`.
"""

from __future__ import annotations

import models.compat  # noqa: F401  (before detectron2)

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling.backbone.fpn import FPN
from torch import nn

from models.hornet import GnConv

# Stage-3 rfft2 grid of a HorNet at 224 (14×8): the GF weight's nominal size in HorFPN; it is resized to each
# level's grid at run time (assumed: the neck's configured size was not available).
HORFPN_GF_SIZE = (14, 8)


class HorFPN(FPN):
    """FPN whose output convs are order-2 gnConvs (`gf=True`: global-local filter instead of the 7×7 kernel)."""

    def __init__(self, *args, gf: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        convs = []
        for name, module in list(self.named_children()):
            if name.startswith("fpn_output"):
                gn = GnConv(module.out_channels, order=2, gf_size=HORFPN_GF_SIZE if gf else None)
                setattr(self, name, gn)
                convs.append((int(name[len("fpn_output"):]), gn))
        self.output_convs = [gn for _, gn in sorted(convs, reverse=True)]  # top-down order, as FPN keeps it


# mmcv names a ConvModule's norm after its type (`bn` for BN and SyncBN, `gn` for GroupNorm).
NORM_KEYS = {"BN": "bn", "SyncBN": "bn", "naiveSyncBN": "bn", "GN": "gn"}


class ConvModule(nn.Module):
    """mmcv's ConvModule in its key layout (`conv.*`, `bn.*`/`gn.*`): conv (no bias under a norm) -> norm -> ReLU,
    so that mmseg heads' weights load key for key."""

    def __init__(self, in_chs: int, out_chs: int, k: int, norm: str):
        super().__init__()
        if norm and norm not in NORM_KEYS:
            raise ValueError(f"unknown head norm {norm!r}; valid: {', '.join(NORM_KEYS)} or '' (none)")
        self.conv = nn.Conv2d(in_chs, out_chs, k, padding=k // 2, bias=not norm)
        self.norm_key = NORM_KEYS.get(norm)
        if norm:
            self.add_module(self.norm_key, get_norm(norm, out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_key:
            x = getattr(self, self.norm_key)(x)
        return F.relu(x)


class DecodeHead(nn.Module):
    """detectron2's semantic-segmentation head contract (as `SemSegFPNHead`): `forward(features, targets)` returns
    (None, losses) in training and (logits at input resolution, {}) at inference. Subclasses produce logits at
    `common_stride` from `layers(features)`; the loss is cross-entropy on logits upsampled to the labels."""

    def __init__(self, input_shape: dict[str, ShapeSpec], in_features: list[str] | None, num_classes: int,
                 ignore_value: int = 255, loss_weight: float = 1.0, dropout: float = 0.1):
        super().__init__()
        self.in_features = list(in_features or sorted(input_shape, key=lambda k: input_shape[k].stride))
        self.in_channels = [input_shape[f].channels for f in self.in_features]
        self.common_stride = input_shape[self.in_features[0]].stride
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.dropout = nn.Dropout2d(dropout)

    def layers(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _upsample(self, logits: torch.Tensor) -> torch.Tensor:
        return F.interpolate(logits.float(), scale_factor=self.common_stride, mode="bilinear", align_corners=False)

    def forward(self, features: dict[str, torch.Tensor], targets: torch.Tensor | None = None):
        logits, aux = self.layers(features)
        if not self.training:
            return self._upsample(logits), {}
        losses = {"loss_sem_seg": self.loss_weight * F.cross_entropy(self._upsample(logits), targets,
                                                                     ignore_index=self.ignore_value)}
        for name, (aux_logits, weight) in aux.items():
            up = F.interpolate(aux_logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
            losses[f"loss_{name}"] = weight * F.cross_entropy(up, targets, ignore_index=self.ignore_value)
        return None, losses


class MLP(nn.Module):
    """SegFormer's per-level linear embedding (`proj`), applied to every position of a map."""

    def __init__(self, in_chs: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_chs, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)


class SegFormerHead(DecodeHead):
    """All-MLP decoder: a linear map of every level to `embed_dim`, upsampled to stride 4, concatenated (deepest
    first), fused by a 1×1 conv + norm + ReLU, dropout 0.1, 1×1 classifier. LVT's ADE20K config: embed_dim 256,
    SyncBN (lvt.md §D). Keys as the SegFormer code base's `SegFormerHead` (`linear_c1..4.proj`, `linear_fuse`,
    `linear_pred`), whose decode heads LVT's segmentation code uses."""

    # The SegFormer code base's head also builds mmseg's `conv_seg` classifier, which it never applies.
    unused_keys = ("conv_seg.",)

    def __init__(self, input_shape: dict[str, ShapeSpec], num_classes: int = 150, in_features=None,
                 embed_dim: int = 256, norm: str = "SyncBN", **kwargs):
        super().__init__(input_shape, in_features, num_classes, **kwargs)
        for i, c in enumerate(self.in_channels, 1):
            self.add_module(f"linear_c{i}", MLP(c, embed_dim))
        self.linear_fuse = ConvModule(len(self.in_channels) * embed_dim, embed_dim, 1, norm)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    def layers(self, features):
        maps = [features[f] for f in self.in_features]
        size = maps[0].shape[-2:]
        embedded = [F.interpolate(getattr(self, f"linear_c{i}")(m), size=size, mode="bilinear", align_corners=False)
                    for i, m in enumerate(maps, 1)]
        return self.linear_pred(self.dropout(self.linear_fuse(torch.cat(embedded[::-1], dim=1)))), {}


class FCNHead(nn.Module):
    """mmseg's `FCNHead` with one conv and no input concatenation, the auxiliary head of UPerNet recipes:
    3×3 conv + norm + ReLU, dropout 0.1, 1×1 classifier (keys `convs.0.*`, `conv_seg.*`)."""

    def __init__(self, in_chs: int, channels: int, num_classes: int, norm: str):
        super().__init__()
        self.convs = nn.Sequential(ConvModule(in_chs, channels, 3, norm))
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


class UperNetHead(DecodeHead):
    """UPerNet (mmseg `UPerHead`): pyramid pooling (scales 1, 2, 3, 6) on the last map, lateral 1×1 + top-down
    sums, 3×3 output convs, all levels upsampled to stride 4 and fused by a 3×3 conv; channels 512. The
    auxiliary FCN head (one 3×3 conv to 256 on `aux_feature`, loss weight 0.4) is the HorNet ADE20K recipe
    (hornet.md §D). Keys as mmseg's `UPerHead` (`psp_modules`, `bottleneck`, `lateral_convs`, `fpn_convs`,
    `fpn_bottleneck`, `conv_seg`), the auxiliary head's as its `FCNHead` under `auxiliary_head`."""

    def __init__(self, input_shape: dict[str, ShapeSpec], num_classes: int = 150, in_features=None,
                 channels: int = 512, pool_scales=(1, 2, 3, 6), norm: str = "SyncBN",
                 aux_feature: str | None = None, aux_channels: int = 256, aux_weight: float = 0.4, **kwargs):
        super().__init__(input_shape, in_features, num_classes, **kwargs)
        *lower, last = self.in_channels
        self.psp_modules = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(last, channels, 1, norm))
                                         for s in pool_scales)
        self.bottleneck = ConvModule(last + len(pool_scales) * channels, channels, 3, norm)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1, norm) for c in lower)
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, norm) for _ in lower)
        self.fpn_bottleneck = ConvModule(len(self.in_channels) * channels, channels, 3, norm)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.aux_feature, self.aux_weight = aux_feature, aux_weight
        if aux_feature is not None:
            self.auxiliary_head = FCNHead(input_shape[aux_feature].channels, aux_channels, num_classes, norm)

    @staticmethod
    def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def layers(self, features):
        maps = [features[f] for f in self.in_features]
        top = maps[-1]
        top = self.bottleneck(torch.cat([top] + [self._resize(p(top), top) for p in self.psp_modules], dim=1))
        laterals = [conv(m) for conv, m in zip(self.lateral_convs, maps[:-1])] + [top]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._resize(laterals[i], laterals[i - 1])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [self._resize(o, outs[0]) for o in outs[1:]], dim=1))
        aux = {}
        if self.aux_feature is not None and self.training:
            aux["aux_sem_seg"] = (self.auxiliary_head(features[self.aux_feature]), self.aux_weight)
        return self.conv_seg(self.dropout(fused)), aux

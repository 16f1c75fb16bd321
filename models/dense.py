"""One detectron2 adapter for every registered backbone, and the detector configs that use it.

`RegistryBackbone` wraps `models.create(name, features_only=True)`; its named outputs, strides and
channels come from the model's `feature_info`, so no family needs its own adapter.
"""

from __future__ import annotations

import pipeline.compat  # noqa: F401  (before detectron2)

from detectron2.config import LazyCall as L
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.modeling import Backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from torch import nn

import models

# Torchvision/timm ImageNet statistics in 0-255 RGB: the project's backbones are pretrained with them.
IMAGENET_PIXEL_MEAN = [123.675, 116.28, 103.53]
IMAGENET_PIXEL_STD = [58.395, 57.12, 57.375]


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """Swap a backbone's BatchNorm layers: "BN" keeps them, "FrozenBN" fixes their statistics and affine
    (fine-tuning from ImageNet weights), "SyncBN" syncs them across GPUs, "GN" replaces them with
    GroupNorm(32) for from-scratch training (frozen statistics diverge without pretraining).
    LayerNorm-based families (PVT) have no BatchNorm and are unaffected."""
    if norm == "BN":
        return module
    if norm == "FrozenBN":
        return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
    if norm == "SyncBN":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if norm == "GN":
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.GroupNorm(32, child.num_features))
            else:
                convert_norm(child, norm)
        return module
    raise ValueError(f"unknown norm {norm!r}; valid: BN, FrozenBN, SyncBN, GN")


class RegistryBackbone(Backbone):
    def __init__(self, name: str, out_features: list[str] | None = None, pretrained: str | None = None,
                 freeze_at: int = 0, norm: str = "BN", **overrides):
        super().__init__()
        self.net = convert_norm(models.create(name, features_only=True, pretrained=pretrained, **overrides), norm)
        info = self.net.feature_info
        self._all_features = [f["name"] for f in info]
        self._out_features = list(out_features or self._all_features)
        unknown = sorted(set(self._out_features) - set(self._all_features))
        if unknown:
            raise ValueError(f"{name}: unknown out_features {unknown}; valid: {self._all_features}")
        self._out_feature_channels = {f["name"]: f["num_chs"] for f in info}
        self._out_feature_strides = {f["name"]: f["reduction"] for f in info}
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """detectron2's convention: 0 trains everything, 1 freezes the stem (whatever precedes the first
        feature stage), k > 1 also freezes the first k-1 feature stages."""
        if freeze_at <= 0:
            return
        stage_modules = [f["module"] for f in self.net.feature_info]
        frozen = stage_modules[: freeze_at - 1]
        for name, p in self.net.named_parameters():
            in_stage = next((m for m in stage_modules if name.startswith(m + ".")), None)
            if in_stage is None or in_stage in frozen:
                p.requires_grad_(False)

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides.values())

    def forward(self, x):
        feats = dict(zip(self._all_features, self.net(x)))
        return {k: feats[k] for k in self._out_features}

    def output_shape(self):
        return {k: ShapeSpec(channels=self._out_feature_channels[k], stride=self._out_feature_strides[k])
                for k in self._out_features}


def feature_info(name: str) -> list[dict]:
    return models.create(name, features_only=True).feature_info


def _with_backbone(model, backbone: str, in_features: list[str], **backbone_kwargs):
    model.backbone.bottom_up = L(RegistryBackbone)(name=backbone, **backbone_kwargs)
    model.backbone.in_features = in_features
    model.pixel_mean = IMAGENET_PIXEL_MEAN
    model.pixel_std = IMAGENET_PIXEL_STD
    model.input_format = "RGB"
    return model


def mask_rcnn(backbone: str, num_classes: int = 80, pretrained: str | None = None, freeze_at: int = 0,
              norm: str = "BN", **overrides):
    """detectron2's Mask R-CNN + FPN (P2-P6, 256 channels) with a registry backbone as bottom-up."""
    model = _with_backbone(get_config("common/models/mask_rcnn_fpn.py").model, backbone,
                           [f["name"] for f in feature_info(backbone)],
                           pretrained=pretrained, freeze_at=freeze_at, norm=norm, **overrides)
    model.roi_heads.num_classes = num_classes
    return model


def retinanet(backbone: str, num_classes: int = 80, pretrained: str | None = None, freeze_at: int = 0,
              norm: str = "BN", **overrides):
    """detectron2's RetinaNet: FPN on the stride 8-32 features plus P6/P7 from the last one (PVT's mmdet
    config: start_level=1, add_extra_convs='on_input')."""
    info = feature_info(backbone)
    model = _with_backbone(get_config("common/models/retinanet.py").model, backbone, [f["name"] for f in info[1:]],
                           pretrained=pretrained, freeze_at=freeze_at, norm=norm, **overrides)
    model.backbone.top_block = L(LastLevelP6P7)(in_channels=info[-1]["num_chs"], out_channels=256,
                                                in_feature=info[-1]["name"])
    model.num_classes = num_classes
    return model

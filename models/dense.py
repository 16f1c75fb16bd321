"""One detectron2 adapter for every registered backbone, and the detector configs that use it.

`RegistryBackbone` wraps `models.create(name, features_only=True)`; its named outputs, strides and
channels come from the model's `feature_info`, so no family needs its own adapter.
"""

from __future__ import annotations

import pipeline.compat  # noqa: F401  (before detectron2)

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.modeling import Backbone

import models

# Torchvision/timm ImageNet statistics in 0-255 RGB: the project's backbones are pretrained with them.
IMAGENET_PIXEL_MEAN = [123.675, 116.28, 103.53]
IMAGENET_PIXEL_STD = [58.395, 57.12, 57.375]


class RegistryBackbone(Backbone):
    def __init__(self, name: str, out_features: list[str] | None = None, pretrained: str | None = None,
                 freeze_at: int = 0, **overrides):
        super().__init__()
        self.net = models.create(name, features_only=True, pretrained=pretrained, **overrides)
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
        """Freeze the first `freeze_at` feature stages (0 = train everything)."""
        for f in self.net.feature_info[:freeze_at]:
            for p in self.net.get_submodule(f["module"]).parameters():
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


def feature_names(name: str) -> list[str]:
    return [f["name"] for f in models.create(name, features_only=True).feature_info]


def mask_rcnn(backbone: str, num_classes: int = 80, pretrained: str | None = None, freeze_at: int = 0,
              **overrides):
    """detectron2's Mask R-CNN + FPN (P2-P6, 256 channels) with a registry backbone as bottom-up."""
    model = get_config("common/models/mask_rcnn_fpn.py").model
    model.backbone.bottom_up = L(RegistryBackbone)(name=backbone, pretrained=pretrained, freeze_at=freeze_at,
                                                  **overrides)
    model.backbone.in_features = feature_names(backbone)
    model.roi_heads.num_classes = num_classes
    model.pixel_mean = IMAGENET_PIXEL_MEAN
    model.pixel_std = IMAGENET_PIXEL_STD
    model.input_format = "RGB"
    return model

"""Standard ResNet/ResNeXt baselines that the papers' dense-prediction tables compare against (PVT Tables 2-5).

These rows use the original ImageNet weights (torchvision's), which the user supplies; the pipeline does not
pretrain them. The networks are timm's `ResNet`, whose parameter names equal torchvision's, so a torchvision
checkpoint loads as it is. Dense (`features_only=True`): the four stage maps res2..res5 at strides 4-32.
"""

from __future__ import annotations

import torch
from timm.models.resnet import Bottleneck, BasicBlock, ResNet

from models._registry import register_family

# torchvision's stage depths and grouped widths (He et al. 2016, Xie et al. 2017).
VARIANTS = {
    "resnet18_torchvision": dict(block=BasicBlock, layers=(2, 2, 2, 2)),
    "resnet50_torchvision": dict(block=Bottleneck, layers=(3, 4, 6, 3)),
    "resnet101_torchvision": dict(block=Bottleneck, layers=(3, 4, 23, 3)),
    "resnext101_32x4d_torchvision": dict(block=Bottleneck, layers=(3, 4, 23, 3), cardinality=32, base_width=4),
    "resnext101_64x4d_torchvision": dict(block=Bottleneck, layers=(3, 4, 23, 3), cardinality=64, base_width=4),
}


def feature_info(variant: dict) -> list[dict]:
    """layer1..layer4 (res2..res5) at strides 4/8/16/32; bottlenecks widen their output 4x."""
    width = 1 if variant["block"] is BasicBlock else 4
    return [dict(num_chs=64 * width * 2 ** i, reduction=4 * 2 ** i, module=f"layer{i + 1}", name=f"res{i + 2}")
            for i in range(4)]


class TorchvisionResNet(ResNet):
    """timm's ResNet in torchvision's layout; `features_only` drops the classifier and returns res2..res5."""

    def __init__(self, variant: dict, num_classes: int = 1000, features_only: bool = False,
                 drop_path_rate: float = 0.0, img_size: int | None = None):
        super().__init__(**variant, num_classes=num_classes, drop_path_rate=drop_path_rate)
        self.features_only = features_only
        self.feature_info = feature_info(variant)
        if features_only:
            del self.fc, self.global_pool

    def forward(self, x: torch.Tensor):
        if not self.features_only:
            return super().forward(x)
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        feats = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            feats.append(x)
        return feats


def checkpoint_filter_fn(state_dict: dict, model: TorchvisionResNet) -> dict:
    """torchvision keys are ours; a dense model drops the classifier."""
    if model.features_only:
        return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    return dict(state_dict)


register_family(__name__, VARIANTS, checkpoint_filter_fn, feature_info, network=TorchvisionResNet)

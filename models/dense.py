"""One detectron2 adapter for every registered backbone, and the detector configs that use it.

`RegistryBackbone` wraps `models.create(name, features_only=True)`; its named outputs (res2..res5 for every
family), strides and channels come from the variant's `feature_info`, which the builders below read without
building the network, so no family needs its own adapter and each detector builds its backbone once.
"""

from __future__ import annotations

import models.compat  # noqa: F401  (before detectron2)

from detectron2.config import LazyCall as L
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.modeling import Backbone, SemanticSegmentor
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers
from torch import nn

import logging
import re

import models
from models._registry import _summary, load_strict, read_checkpoint
from models.heads import HorFPN, SegFormerHead, UperNetHead

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
        self.model_name = name
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


NECKS = ("fpn", "horfpn_7x7", "horfpn_gf")


def _with_backbone(model, backbone: str, in_features: list[str], neck: str = "fpn", **backbone_kwargs):
    if neck not in NECKS:
        raise ValueError(f"unknown neck {neck!r}; valid: {', '.join(NECKS)}")
    model.backbone.bottom_up = L(RegistryBackbone)(name=backbone, **backbone_kwargs)
    model.backbone.in_features = in_features
    if neck != "fpn":
        model.backbone._target_ = HorFPN
        model.backbone.gf = neck == "horfpn_gf"
    model.pixel_mean = IMAGENET_PIXEL_MEAN
    model.pixel_std = IMAGENET_PIXEL_STD
    model.input_format = "RGB"
    return model


# Head widths of the two-stage detectors: detectron2's defaults, and LVT's light Panoptic FPN heads
# (lvt.md §D, detection/configs/lvt/panoptic_fpn_lvt_fpn_*.py: FPN and RPN 96 channels, Shared2FC box head
# with 160-d FCs, 4 x 96-channel mask convs, semantic head 48 channels with GN(12)).
HEAD_WIDTHS = {
    "standard": dict(fpn=256, box_fc=1024, mask_conv=256, sem_seg=128, sem_seg_groups=32),
    "light": dict(fpn=96, box_fc=160, mask_conv=96, sem_seg=48, sem_seg_groups=12),
}


def _set_head_widths(model, heads: str):
    if heads not in HEAD_WIDTHS:
        raise ValueError(f"unknown head widths {heads!r}; valid: {', '.join(HEAD_WIDTHS)}")
    if heads == "standard":
        return
    w = HEAD_WIDTHS[heads]
    model.backbone.out_channels = w["fpn"]
    model.proposal_generator.head.in_channels = w["fpn"]
    roi = model.roi_heads
    roi.box_head.input_shape = ShapeSpec(channels=w["fpn"], height=7, width=7)
    roi.box_head.fc_dims = [w["box_fc"]] * 2
    roi.box_predictor.input_shape = ShapeSpec(channels=w["box_fc"])
    roi.mask_head.input_shape = ShapeSpec(channels=w["fpn"], width=14, height=14)
    roi.mask_head.conv_dims = [w["mask_conv"]] * 5
    if "sem_seg_head" in model:
        model.sem_seg_head.conv_dims = w["sem_seg"]
        model.sem_seg_head.norm = L(GroupNormOf)(groups=w["sem_seg_groups"])


class GroupNormOf:
    """A GroupNorm factory with a fixed group count, for detectron2's `norm` arguments (callable on channels)."""

    def __init__(self, groups: int):
        self.groups = groups

    def __call__(self, channels: int) -> nn.GroupNorm:
        return nn.GroupNorm(self.groups, channels)


def mask_rcnn(backbone: str, num_classes: int = 80, pretrained: str | None = None, freeze_at: int = 0,
              norm: str = "BN", neck: str = "fpn", heads: str = "standard", **overrides):
    """detectron2's Mask R-CNN + FPN (P2-P6, 256 channels) with a registry backbone as bottom-up; `neck`
    "horfpn_7x7"/"horfpn_gf" swaps the FPN for HorFPN, `heads` picks the head widths (HEAD_WIDTHS)."""
    model = _with_backbone(get_config("common/models/mask_rcnn_fpn.py").model, backbone,
                           [f["name"] for f in models.feature_info(backbone)], neck,
                           pretrained=pretrained, freeze_at=freeze_at, norm=norm, **overrides)
    model.roi_heads.num_classes = num_classes
    _set_head_widths(model, heads)
    return model


def cascade_mask_rcnn(backbone: str, num_classes: int = 80, pretrained: str | None = None, freeze_at: int = 0,
                      norm: str = "BN", head_norm: str = "SyncBN", neck: str = "fpn", **overrides):
    """Cascade Mask R-CNN as HorNet trains it (hornet.md §D, the ConvNeXt recipe): three stages (IoU 0.5/0.6/0.7)
    of 4-conv + 1-FC box heads with `head_norm`, GIoU box loss with weight 10. Departure: detectron2's cascade
    supports class-agnostic regression only (the mmdet recipe regresses per class)."""
    model = _with_backbone(get_config("common/models/cascade_rcnn.py").model, backbone,
                           [f["name"] for f in models.feature_info(backbone)], neck,
                           pretrained=pretrained, freeze_at=freeze_at, norm=norm, **overrides)
    model.roi_heads.num_classes = num_classes
    model.roi_heads.box_heads = [
        L(FastRCNNConvFCHead)(input_shape=ShapeSpec(channels=256, height=7, width=7), conv_dims=[256] * 4,
                              fc_dims=[1024], conv_norm=head_norm)
        for _ in range(3)]
    model.roi_heads.box_predictors = [
        L(FastRCNNOutputLayers)(input_shape=ShapeSpec(channels=1024), test_score_thresh=0.05,
                                box2box_transform=L(Box2BoxTransform)(weights=(w1, w1, w2, w2)),
                                cls_agnostic_bbox_reg=True, num_classes=num_classes, box_reg_loss_type="giou",
                                loss_weight={"loss_box_reg": 10.0})
        for w1, w2 in [(10, 5), (20, 10), (30, 15)]]
    return model


def panoptic_fpn(backbone: str, num_classes: int = 80, num_stuff_classes: int = 54, pretrained: str | None = None,
                 freeze_at: int = 0, norm: str = "BN", heads: str = "standard", **overrides):
    """detectron2's Panoptic FPN (Mask R-CNN + the semantic FPN branch over COCO's 53 stuff classes + "things",
    loss weight 0.5), with a registry backbone; LVT's COCO panoptic framework (`heads="light"`)."""
    model = _with_backbone(get_config("common/models/panoptic_fpn.py").model, backbone,
                           [f["name"] for f in models.feature_info(backbone)], "fpn",
                           pretrained=pretrained, freeze_at=freeze_at, norm=norm, **overrides)
    model.roi_heads.num_classes = num_classes
    model.sem_seg_head.num_classes = num_stuff_classes
    _set_head_widths(model, heads)
    return model


SEG_HEADS = {"segformer": SegFormerHead, "upernet": UperNetHead}


def semantic_segmentor(backbone: str, head: str, num_classes: int = 150, pretrained: str | None = None,
                       freeze_at: int = 0, norm: str = "BN", head_norm: str = "SyncBN", aux: bool = True,
                       **overrides):
    """detectron2's `SemanticSegmentor` with a registry backbone (all four levels) and a decode head:
    "segformer" (LVT's ADE20K head) or "upernet" (HorNet's and PatchConvNet's; with the auxiliary FCN head on
    the third level unless `aux=False`). Label 255 is ignored."""
    if head not in SEG_HEADS:
        raise ValueError(f"unknown segmentation head {head!r}; valid: {', '.join(SEG_HEADS)}")
    info = models.feature_info(backbone)
    shapes = {f["name"]: ShapeSpec(channels=f["num_chs"], stride=f["reduction"]) for f in info}
    head_kwargs = dict(input_shape=shapes, num_classes=num_classes, norm=head_norm)
    if head == "upernet" and aux:
        head_kwargs["aux_feature"] = info[2]["name"]
    return L(SemanticSegmentor)(
        backbone=L(RegistryBackbone)(name=backbone, pretrained=pretrained, freeze_at=freeze_at, norm=norm,
                                     **overrides),
        sem_seg_head=L(SEG_HEADS[head])(**head_kwargs),
        pixel_mean=IMAGENET_PIXEL_MEAN, pixel_std=IMAGENET_PIXEL_STD)


def semantic_fpn(backbone: str, num_classes: int = 150, pretrained: str | None = None, freeze_at: int = 0,
                 norm: str = "BN", head_norm: str = "SyncBN", **overrides):
    """Semantic FPN (Kirillov et al. 2019) as PVT's ADE20K config builds it (pvt.md §D, mmseg `FPN` + `FPNHead`):
    FPN with 256 channels on all four levels, each level upsampled to stride 4 through 128-channel 3×3 convs,
    summed, 1×1 classifier. detectron2's `SemSegFPNHead` is that head. Label 255 is ignored."""
    info = models.feature_info(backbone)
    names = [f["name"] for f in info]
    levels = [f"p{2 + i}" for i in range(len(info))]
    shapes = {lvl: ShapeSpec(channels=256, stride=f["reduction"]) for lvl, f in zip(levels, info)}
    return L(SemanticSegmentor)(
        backbone=L(FPN)(bottom_up=L(RegistryBackbone)(name=backbone, pretrained=pretrained, freeze_at=freeze_at,
                                                      norm=norm, **overrides),
                        in_features=names, out_channels=256, top_block=None),
        sem_seg_head=L(SemSegFPNHead)(input_shape=shapes, num_classes=num_classes, conv_dims=128,
                                      common_stride=info[0]["reduction"], norm=head_norm, ignore_value=255),
        pixel_mean=IMAGENET_PIXEL_MEAN, pixel_std=IMAGENET_PIXEL_STD)


def retinanet(backbone: str, num_classes: int = 80, pretrained: str | None = None, freeze_at: int = 0,
              norm: str = "BN", **overrides):
    """detectron2's RetinaNet: FPN on the stride 8-32 features plus P6/P7 from the last one (PVT's mmdet
    config: start_level=1, add_extra_convs='on_input')."""
    info = models.feature_info(backbone)
    model = _with_backbone(get_config("common/models/retinanet.py").model, backbone, [f["name"] for f in info[1:]],
                           "fpn", pretrained=pretrained, freeze_at=freeze_at, norm=norm, **overrides)
    model.backbone.top_block = L(LastLevelP6P7)(in_channels=info[-1]["num_chs"], out_channels=256,
                                                in_feature=info[-1]["name"])
    model.num_classes = num_classes
    return model


# ---- checkpoint mapping: whole mmseg segmentors ----

_NECK = re.compile(r"neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(.+)")
_SCALE_HEAD = re.compile(r"decode_head\.scale_heads\.(\d+)\.(\d+)\.(conv|bn|gn)\.(.+)")


def _registry_backbone(model: nn.Module) -> tuple[str, RegistryBackbone]:
    return next((name, m) for name, m in model.named_modules() if isinstance(m, RegistryBackbone))


def _fpn_levels(model: nn.Module) -> list[str]:
    return sorted((n[len("fpn_lateral"):] for n, _ in model.backbone.named_children() if n.startswith("fpn_lateral")),
                  key=int)


def _head_key(key: str, model: nn.Module) -> str:
    """One mmseg neck/head key in `model`'s layout: mmseg's `FPN` neck and `FPNHead` as detectron2's `FPN` and
    `SemSegFPNHead` (the same maths: lateral 1×1, nearest top-down sums, 3×3 outputs; per-level 3×3 conv + norm +
    ReLU + ×2 bilinear stacks, summed, 1×1 classifier); this project's own heads have mmseg's keys."""
    head = model.sem_seg_head
    m = _NECK.fullmatch(key)
    if m:
        kind = "fpn_lateral" if m[1] == "lateral_convs" else "fpn_output"
        return f"backbone.{kind}{_fpn_levels(model)[int(m[2])]}.{m[3]}"
    if isinstance(head, SemSegFPNHead):
        m = _SCALE_HEAD.fullmatch(key)
        if m:
            part = "" if m[3] == "conv" else "norm."
            return f"sem_seg_head.{head.in_features[int(m[1])]}.{m[2]}.{part}{m[4]}"
        return key.replace("decode_head.conv_seg.", "sem_seg_head.predictor.", 1)
    if key.startswith("auxiliary_head."):
        return "sem_seg_head." + key
    return key.replace("decode_head.", "sem_seg_head.", 1)


def mmseg_state_dict(state: dict, model: nn.Module, path: str) -> dict:
    """A whole mmseg segmentor's weights (`backbone.`, `neck.`, `decode_head.`, `auxiliary_head.`) in the keys of
    `model`, a `SemanticSegmentor` built by `semantic_segmentor` or `semantic_fpn`: the backbone through its
    family's converter, the rest key for key. Keys the original head builds and never uses (`unused_keys`) are
    left out, in one log line."""
    where, backbone = _registry_backbone(model)
    bb = {k: v for k, v in state.items() if k.startswith("backbone.")}
    out = {f"{where}.net.{k}": v for k, v in models.convert(backbone.model_name, bb, backbone.net, path).items()}
    unused = tuple(f"sem_seg_head.{k}" for k in getattr(model.sem_seg_head, "unused_keys", ()))
    dropped = []
    for key, value in state.items():
        if key in bb:
            continue
        mapped = _head_key(key, model)
        if mapped.startswith(unused):
            dropped.append(key)
        else:
            out[mapped] = value
    if dropped:
        logging.getLogger("models").info("%s: leaves out %d keys the original head does not use: %s", path,
                                         len(dropped), _summary(dropped))
    return out


def load_mmseg(model: nn.Module, path: str) -> None:
    """Load a released mmseg segmentor into `model` strictly: every key and shape, or one CheckpointError line."""
    state = mmseg_state_dict(read_checkpoint(path), model, path)
    load_strict(model, state, path, "not a segmentor of this architecture")

"""models/compat.py and models/dense.py: detectron2 v0.6 (pure Python) with the project's backbones."""

import io

import numpy as np
import pytest
import torch

import models.compat  # noqa: F401

import detectron2
from models.dense import RegistryBackbone, convert_norm


def test_compiled_ops_are_absent_with_a_clear_error():
    from detectron2 import _C

    with pytest.raises(AttributeError, match="pure Python.*use_fast_impl=False"):
        _C.nms_rotated
    assert not hasattr(_C, "__file__")


def test_import_time_shims():
    from PIL import Image

    import detectron2.data.build  # noqa: F401  (uses np.int etc.)
    import detectron2.evaluation.sem_seg_evaluation  # noqa: F401
    from detectron2 import model_zoo

    assert Image.LINEAR == Image.BILINEAR
    assert np.float is float
    assert model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml").endswith(".yaml")
    with pytest.raises(AttributeError, match="caffe2"):
        detectron2.export.Caffe2Tracer
    from detectron2.export import TracingAdapter  # noqa: F401  (the parts without caffe2 still import)


def test_weights_only_loading_accepts_numpy_arrays():
    buf = io.BytesIO()
    torch.save({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded["w"].shape == (2, 3)


def test_adapter_shapes_come_from_feature_info():
    backbone = RegistryBackbone("pvt_tiny")
    shapes = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res2": (64, 4), "res3": (128, 8), "res4": (320, 16), "res5": (512, 32)}
    assert backbone.size_divisibility == 32
    feats = backbone(torch.randn(1, 3, 128, 160))
    assert feats["res4"].shape == (1, 320, 8, 10)


def test_freeze_at_follows_detectron2_convention():
    backbone = RegistryBackbone("pvt_tiny", freeze_at=3)
    frozen = [all(not p.requires_grad for p in s.parameters()) for s in backbone.net.stages]
    assert frozen == [True, True, False, False]
    resnet = RegistryBackbone("resnet50_baseline", freeze_at=1).net
    assert not resnet.conv1.weight.requires_grad and resnet.layer1[0].conv1.weight.requires_grad


def test_norm_choice_for_from_scratch_training():
    import models
    from detectron2.layers import FrozenBatchNorm2d

    gn = convert_norm(models.create("resnet50_baseline", features_only=True), "GN")
    assert isinstance(gn.bn1, torch.nn.GroupNorm) and isinstance(gn.layer4[2].bn3, torch.nn.GroupNorm)
    frozen = RegistryBackbone("resnet50_baseline", norm="FrozenBN").net
    assert isinstance(frozen.bn1, FrozenBatchNorm2d)
    with pytest.raises(ValueError, match="valid: BN, FrozenBN, SyncBN, GN"):
        convert_norm(torch.nn.Identity(), "BatchNorm")

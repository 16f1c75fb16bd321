"""pipeline/compat.py and models/dense.py: detectron2 v0.6 (pure Python) with the project's backbones."""

import io

import numpy as np
import pytest
import torch

import pipeline.compat  # noqa: F401

import detectron2
from detectron2.config import instantiate
from detectron2.utils.events import EventStorage

from models.dense import RegistryBackbone, mask_rcnn


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
        "stage1": (64, 4), "stage2": (128, 8), "stage3": (320, 16), "stage4": (512, 32)}
    assert backbone.size_divisibility == 32
    feats = backbone(torch.randn(1, 3, 128, 160))
    assert feats["stage3"].shape == (1, 320, 8, 10)


def test_freeze_at_freezes_leading_stages():
    backbone = RegistryBackbone("pvt_tiny", freeze_at=2)
    frozen = [all(not p.requires_grad for p in s.parameters()) for s in backbone.net.stages]
    assert frozen == [True, True, False, False]


def test_mask_rcnn_with_pvt_trains_one_step_and_predicts_on_cpu():
    from detectron2.structures import BitMasks, Boxes, Instances

    torch.manual_seed(0)
    model = instantiate(mask_rcnn("pvt_tiny", num_classes=80))
    h, w = 160, 224
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor([[20.0, 30.0, 120.0, 140.0]]))
    inst.gt_classes = torch.tensor([0])
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[0, 30:140, 20:120] = True
    inst.gt_masks = BitMasks(mask)
    batch = [{"image": torch.rand(3, h, w) * 255, "instances": inst, "height": h, "width": w}]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with EventStorage(0):
        losses = model(batch)
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, h, w) * 255}])
    assert out[0]["instances"].image_size == (h, w)

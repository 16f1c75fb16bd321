"""models/heads.py: HorFPN, UperNet and the SegFormer head as detectron2 modules."""

import pytest
import torch

import models.compat  # noqa: F401

from detectron2.config import instantiate
from detectron2.modeling.backbone.fpn import FPN
from detectron2.utils.events import EventStorage

from models.dense import mask_rcnn, semantic_segmentor
from models.flops import count_params
from models.heads import HorFPN
from models.hornet import GlobalLocalFilter, GnConv
from tests.test_models import _batch, _train_step_and_predict


@pytest.mark.parametrize("neck", ["horfpn_7x7", "horfpn_gf"])
def test_horfpn_replaces_every_output_conv_with_an_order_2_gnconv(neck):
    backbone = instantiate(mask_rcnn("hornet_tiny_7x7", neck=neck).backbone)
    assert isinstance(backbone, HorFPN) and isinstance(backbone, FPN)
    outputs = {n: m for n, m in backbone.named_children() if n.startswith("fpn_output")}
    assert sorted(outputs) == ["fpn_output2", "fpn_output3", "fpn_output4", "fpn_output5"]
    assert all(isinstance(m, GnConv) and m.order == 2 for m in outputs.values())
    assert backbone.output_convs == [outputs[f"fpn_output{s}"] for s in (5, 4, 3, 2)]
    assert isinstance(outputs["fpn_output2"].dwconv, GlobalLocalFilter) == (neck == "horfpn_gf")
    feats = backbone(torch.randn(1, 3, 224, 320))  # non-square: the GF weights are resized per level
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {
        "p2": (56, 80), "p3": (28, 40), "p4": (14, 20), "p5": (7, 10), "p6": (4, 5)}


def test_mask_rcnn_with_horfpn_trains_one_step():
    torch.manual_seed(0)
    model = instantiate(mask_rcnn("hornet_tiny_gf", norm="GN", neck="horfpn_gf"))
    losses, out = _train_step_and_predict(model, _batch(), torch.rand(3, 192, 256) * 255)
    assert "loss_mask" in losses and out["instances"].image_size == (192, 256)


def test_unknown_neck_and_head_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown neck 'hfpn'; valid: fpn, horfpn_7x7, horfpn_gf"):
        mask_rcnn("hornet_tiny_7x7", neck="hfpn")
    with pytest.raises(ValueError, match="unknown segmentation head 'uper'; valid: segformer, upernet"):
        semantic_segmentor("lvt", "uper")


def test_segformer_lvt_model_size_matches_the_readme():
    # LVT README, ADE20K with the SegFormer head: 3.9M parameters.
    model = instantiate(semantic_segmentor("lvt", "segformer", num_classes=150))
    assert round(count_params(model) / 1e6, 1) == 3.9


def test_upernet_hornet_model_size_matches_the_readme():
    # HorNet segmentation README (hornet.md, ADE20K table): HorNet-T 7×7 + UPerNet (with the auxiliary head) 52M.
    model = instantiate(semantic_segmentor("hornet_tiny_7x7", "upernet", num_classes=150))
    assert round(count_params(model) / 1e6) == 52


def test_segmentation_ignores_label_255():
    torch.manual_seed(0)
    model = instantiate(semantic_segmentor("lvt", "segformer", num_classes=4, head_norm="GN")).train()
    image = torch.rand(3, 64, 64) * 255
    labels = torch.randint(0, 4, (64, 64))
    with EventStorage(0):
        base = model([{"image": image, "sem_seg": labels}])["loss_sem_seg"]
        half = labels.clone()
        half[32:] = 255
        masked = model([{"image": image, "sem_seg": half}])["loss_sem_seg"]
    assert torch.isfinite(masked) and not torch.isclose(base, masked)

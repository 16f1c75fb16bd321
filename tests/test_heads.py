"""models/heads.py: HorFPN, UperNet and the SegFormer head as detectron2 modules."""

import pytest
import torch

import models.compat  # noqa: F401

import torch.nn.functional as F
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import FPN
from detectron2.utils.events import EventStorage

import models
from models import CheckpointError
from models.dense import load_mmseg, mask_rcnn, semantic_fpn, semantic_segmentor
from models.flops import count_params
from models.heads import HorFPN, SegFormerHead, UperNetHead
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


# ---- mmseg key layouts: the heads load mmseg's weights key for key and compute mmseg's maths ----

def _conv_module(prefix: str, cin: int, cout: int, k: int) -> dict:
    """mmcv ConvModule parameters (conv without bias, then BN) under mmseg's names, random."""
    return {f"{prefix}.conv.weight": torch.randn(cout, cin, k, k) * 0.1, f"{prefix}.bn.weight": torch.rand(cout) + 0.5,
            f"{prefix}.bn.bias": torch.randn(cout) * 0.1, f"{prefix}.bn.running_mean": torch.randn(cout) * 0.1,
            f"{prefix}.bn.running_var": torch.rand(cout) + 0.5, f"{prefix}.bn.num_batches_tracked": torch.tensor(7)}


def _apply_conv_module(x, sd: dict, prefix: str):
    """mmcv ConvModule at test time: conv (padding k//2), BatchNorm with running statistics, ReLU."""
    w = sd[f"{prefix}.conv.weight"]
    x = F.conv2d(x, w, None, padding=w.shape[-1] // 2)
    x = F.batch_norm(x, sd[f"{prefix}.bn.running_mean"], sd[f"{prefix}.bn.running_var"], sd[f"{prefix}.bn.weight"],
                     sd[f"{prefix}.bn.bias"], False, 0.0, 1e-5)
    return F.relu(x)


def _resize(x, like):
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


CHANNELS, SIZES, SCALES = [8, 16, 24, 32], [32, 16, 8, 4], (1, 2, 3, 6)


def _features():
    torch.manual_seed(1)
    return {f"res{i + 2}": torch.randn(2, c, s, s) for i, (c, s) in enumerate(zip(CHANNELS, SIZES))}


def _shapes():
    return {f"res{i + 2}": ShapeSpec(channels=c, stride=4 * 2 ** i) for i, c in enumerate(CHANNELS)}


def test_an_mmseg_uperhead_with_its_auxiliary_fcn_loads_key_for_key_and_computes_mmsegs_output():
    """mmseg UPerHead.forward (PPM on the last map, bottleneck, laterals, top-down sums, fpn convs, fused) and
    FCNHead(num_convs=1, concat_input=False), written out here on mmseg's state dict."""
    torch.manual_seed(0)
    ch, classes = 12, 5
    sd = {}
    for i, _ in enumerate(SCALES):
        sd.update(_conv_module(f"psp_modules.{i}.1", CHANNELS[-1], ch, 1))
    sd.update(_conv_module("bottleneck", CHANNELS[-1] + len(SCALES) * ch, ch, 3))
    for i, c in enumerate(CHANNELS[:-1]):
        sd.update(_conv_module(f"lateral_convs.{i}", c, ch, 1))
        sd.update(_conv_module(f"fpn_convs.{i}", ch, ch, 3))
    sd.update(_conv_module("fpn_bottleneck", len(CHANNELS) * ch, ch, 3))
    sd.update({"conv_seg.weight": torch.randn(classes, ch, 1, 1), "conv_seg.bias": torch.randn(classes)})
    sd.update(_conv_module("auxiliary_head.convs.0", CHANNELS[2], 6, 3))
    sd.update({"auxiliary_head.conv_seg.weight": torch.randn(classes, 6, 1, 1),
               "auxiliary_head.conv_seg.bias": torch.randn(classes)})

    head = UperNetHead(_shapes(), num_classes=classes, channels=ch, norm="BN", aux_feature="res4", aux_channels=6)
    head.load_state_dict(sd)  # strict: the same keys and shapes
    feats = _features()
    x = list(feats.values())
    top = x[-1]
    psp = [top] + [_resize(_apply_conv_module(F.adaptive_avg_pool2d(top, s), sd, f"psp_modules.{i}.1"), top)
                   for i, s in enumerate(SCALES)]
    laterals = [_apply_conv_module(x[i], sd, f"lateral_convs.{i}") for i in range(3)]
    laterals.append(_apply_conv_module(torch.cat(psp, 1), sd, "bottleneck"))
    for i in range(3, 0, -1):
        laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1])
    outs = [_apply_conv_module(laterals[i], sd, f"fpn_convs.{i}") for i in range(3)] + [laterals[3]]
    fused = _apply_conv_module(torch.cat([outs[0]] + [_resize(o, outs[0]) for o in outs[1:]], 1), sd,
                               "fpn_bottleneck")
    expected = F.conv2d(fused, sd["conv_seg.weight"], sd["conv_seg.bias"])
    aux = F.conv2d(_apply_conv_module(x[2], sd, "auxiliary_head.convs.0"), sd["auxiliary_head.conv_seg.weight"],
                   sd["auxiliary_head.conv_seg.bias"])
    head.eval()
    with torch.no_grad():
        logits, _ = head.layers(feats)
        assert torch.allclose(logits, expected, atol=1e-5)
        assert torch.allclose(head.auxiliary_head(feats["res4"]), aux, atol=1e-5)


def test_a_segformer_code_base_head_loads_key_for_key_and_computes_its_output():
    """The SegFormer code base's SegFormerHead.forward: per-level Linear (`linear_c{i}.proj`), resized to the
    first level, concatenated c4..c1, `linear_fuse` ConvModule 1×1, `linear_pred`."""
    torch.manual_seed(0)
    dim, classes = 10, 4
    sd = {}
    for i, c in enumerate(CHANNELS, 1):
        sd[f"linear_c{i}.proj.weight"], sd[f"linear_c{i}.proj.bias"] = torch.randn(dim, c), torch.randn(dim)
    sd.update(_conv_module("linear_fuse", 4 * dim, dim, 1))
    sd.update({"linear_pred.weight": torch.randn(classes, dim, 1, 1), "linear_pred.bias": torch.randn(classes)})
    head = SegFormerHead(_shapes(), num_classes=classes, embed_dim=dim, norm="BN").eval()
    head.load_state_dict(sd)
    feats = _features()
    c1 = feats["res2"]
    embedded = []
    for i, x in enumerate(feats.values(), 1):
        n, _, h, w = x.shape
        e = F.linear(x.flatten(2).transpose(1, 2), sd[f"linear_c{i}.proj.weight"], sd[f"linear_c{i}.proj.bias"])
        embedded.append(_resize(e.permute(0, 2, 1).reshape(n, -1, h, w), c1))
    fused = _apply_conv_module(torch.cat(embedded[::-1], 1), sd, "linear_fuse")
    expected = F.conv2d(fused, sd["linear_pred.weight"], sd["linear_pred.bias"])
    with torch.no_grad():
        assert torch.allclose(head.layers(feats)[0], expected, atol=1e-5)


def _mmseg_file(path, state: dict) -> None:
    """A checkpoint as mmseg saves it: `meta` (plain values) and `state_dict`."""
    torch.save({"meta": {"mmseg_version": "0.20.2", "CLASSES": ("wall", "building"), "iter": 160000},
                "state_dict": state}, path)


def _same_output(a, b, size=64) -> bool:
    image = torch.rand(3, size, size) * 255
    with torch.no_grad():
        return torch.allclose(a.eval()([{"image": image}])[0]["sem_seg"], b.eval()([{"image": image}])[0]["sem_seg"],
                              atol=1e-5)


def test_a_released_hornet_upernet_segmentor_loads_whole(tmp_path):
    torch.manual_seed(0)
    cfg = semantic_segmentor("hornet_tiny_7x7", "upernet", num_classes=150, head_norm="BN")
    reference = instantiate(cfg)
    state = {f"backbone.{k}": v for k, v in reference.backbone.net.state_dict().items()}  # hornet.md §E
    state.update({f"decode_head.{k}": v for k, v in reference.sem_seg_head.state_dict().items()
                  if not k.startswith("auxiliary_head.")})
    state.update({k: v for k, v in reference.sem_seg_head.state_dict().items() if k.startswith("auxiliary_head.")})
    _mmseg_file(tmp_path / "upernet.pth", state)
    torch.manual_seed(1)
    loaded = instantiate(cfg)
    load_mmseg(loaded, str(tmp_path / "upernet.pth"))
    assert _same_output(loaded, reference)
    del state["auxiliary_head.conv_seg.bias"]
    _mmseg_file(tmp_path / "broken.pth", state)
    with pytest.raises(CheckpointError, match=r"broken.pth: not a segmentor of this architecture: missing keys "
                                              r"\['sem_seg_head.auxiliary_head.conv_seg.bias'\]; unexpected keys \[\]"):
        load_mmseg(instantiate(cfg), str(tmp_path / "broken.pth"))


def test_a_released_lvt_segformer_loads_whole_and_its_unused_classifier_is_left_out(tmp_path, caplog):
    from tests.test_lvt import _official_layout

    torch.manual_seed(0)
    cfg = semantic_segmentor("lvt", "segformer", num_classes=150, head_norm="BN")
    reference = instantiate(cfg)
    state = _official_layout(reference.backbone.net.state_dict(), prefix="backbone.")  # backbone.backbone.{s}...
    state.update({f"decode_head.{k}": v for k, v in reference.sem_seg_head.state_dict().items()})
    state.update({"decode_head.conv_seg.weight": torch.randn(150, 128, 1, 1), "decode_head.conv_seg.bias":
                  torch.randn(150)})
    _mmseg_file(tmp_path / "segformer_lvt_ade20k.pth", state)
    torch.manual_seed(1)
    loaded = instantiate(cfg)
    with caplog.at_level("INFO", logger="models"):
        load_mmseg(loaded, str(tmp_path / "segformer_lvt_ade20k.pth"))
    assert _same_output(loaded, reference)
    assert "leaves out 2 keys the original head does not use: decode_head.* (2)" in caplog.text


def test_a_released_pvt_semantic_fpn_loads_whole(tmp_path):
    """mmseg's FPN neck and FPNHead keys (pvt.md §D: fpn_pvt_*_ade20k configs) onto detectron2's FPN and
    SemSegFPNHead."""
    from tests.test_pvt import _to_official_layout

    torch.manual_seed(0)
    cfg = semantic_fpn("pvt_tiny", num_classes=150, head_norm="GN")
    reference = instantiate(cfg)
    state = {f"backbone.{k}": v for k, v in _to_official_layout(reference.backbone.bottom_up.net.state_dict()).items()}
    for i in range(4):
        for part, mine in (("lateral_convs", "fpn_lateral"), ("fpn_convs", "fpn_output")):
            for p in ("weight", "bias"):
                state[f"neck.{part}.{i}.conv.{p}"] = reference.backbone.state_dict()[f"{mine}{i + 2}.{p}"]
    for key, value in reference.sem_seg_head.state_dict().items():
        level, rest = key.split(".", 1)
        if level == "predictor":
            state[f"decode_head.conv_seg.{rest}"] = value
        else:  # p2.0.weight, p3.0.norm.bias, ...
            index, *tail = rest.split(".")
            part = "gn" if tail[0] == "norm" else "conv"
            state[f"decode_head.scale_heads.{int(level[1]) - 2}.{index}.{part}.{tail[-1]}"] = value
    _mmseg_file(tmp_path / "fpn_pvt_t.pth", state)
    torch.manual_seed(1)
    loaded = instantiate(cfg)
    load_mmseg(loaded, str(tmp_path / "fpn_pvt_t.pth"))
    assert _same_output(loaded, reference)


def test_a_whole_mmdet_detector_gives_its_backbone_only(tmp_path, caplog):
    """RetinaNet/Mask R-CNN/Cascade files from mmdet: their necks and heads differ from detectron2's, so a
    backbone takes the `backbone.*` keys and the rest is named in one log line."""
    from tests.test_pvt import _to_official_layout

    torch.manual_seed(0)
    reference = models.create("pvt_small", features_only=True)
    state = {f"backbone.{k}": v for k, v in _to_official_layout(reference.state_dict()).items()}
    state.update({"neck.lateral_convs.0.conv.weight": torch.zeros(256, 128, 1, 1),
                  "bbox_head.retina_cls.weight": torch.zeros(720, 256, 3, 3)})
    torch.save({"meta": {"epoch": 12}, "state_dict": state}, tmp_path / "retinanet_pvt_s.pth")
    with caplog.at_level("INFO", logger="models"):
        loaded = models.create("pvt_small", features_only=True, pretrained=tmp_path / "retinanet_pvt_s.pth")
    assert "a whole detector/segmentor; the backbone leaves out 2 keys: neck.* (1), bbox_head.* (1)" in caplog.text
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded.eval()(x), reference.eval()(x)))

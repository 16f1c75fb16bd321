"""The model registry as a whole: every variant builds, runs forward and backward, and plugs into detectron2."""

import logging

import pytest
import timm
import torch

import models
from pipeline import model_index

import models.compat  # noqa: F401

from detectron2.config import instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from models.dense import cascade_mask_rcnn, mask_rcnn, panoptic_fpn, retinanet, semantic_segmentor

EXPECTED = {
    "pvt_tiny", "pvt_small", "pvt_medium", "pvt_large",
    "resnet50_baseline", "resnet101_baseline", "resnet152_baseline", "resnet200_baseline",
    "botnet50", "botnet101", "botnet152", "botnet200", "botnet_s1_50",
    "botnet_s1_59", "botnet_s1_77", "botnet_s1_110", "botnet_s1_128",
    "botnet_t3", "botnet_t4", "botnet_t5", "botnet_t6", "botnet_t7",
    "hornet_tiny_7x7", "hornet_tiny_gf", "hornet_small_7x7", "hornet_small_gf", "hornet_base_7x7", "hornet_base_gf",
    "hornet_base_gf_img384", "hornet_large_7x7", "hornet_large_gf", "hornet_large_gf_img384",
    "lvt", "lvt_cls",
    "patchconvnet_s60", "patchconvnet_s120", "patchconvnet_b60", "patchconvnet_b120", "patchconvnet_l60",
    "patchconvnet_l120", "patchconvnet_s60_multi", "resnet50_attnpool",
    "resnet18_torchvision", "resnet50_torchvision", "resnet101_torchvision", "resnext101_32x4d_torchvision",
    "resnext101_64x4d_torchvision",
}
FAMILY_REPRESENTATIVES = ["pvt_tiny", "botnet50", "hornet_tiny_gf", "lvt", "patchconvnet_s60"]
# An alias builds the variant it names; the tests build each network once, under its own name.
NETWORKS = models.list_models(aliases=False)


def test_registry_lists_every_variant():
    assert set(models.list_models()) == EXPECTED


def test_aliases_name_registered_variants():
    # botnet.md §G.3: T3..T6 are S1-59, S1-110, S1-128 at 256, S1-77 at 320.
    assert models.aliases() == {"botnet_t3": "botnet_s1_59", "botnet_t4": "botnet_s1_110",
                                "botnet_t5": "botnet_s1_128", "botnet_t6": "botnet_s1_77"}
    assert set(NETWORKS) == EXPECTED - set(models.aliases())


def test_dense_outputs_follow_one_convention():
    for name in models.list_models():
        assert [f["name"] for f in models.feature_info(name)] == ["res2", "res3", "res4", "res5"], name


# One network per way of deriving its dense outputs: a stride-1 c5, a ResNet under another family's head, a
# basic-block ResNet (the family representatives are checked in the non-square test below).
@pytest.mark.parametrize("name", ["botnet_s1_50", "resnet50_attnpool", "resnet18_torchvision"])
def test_feature_info_comes_from_the_variant_without_building(name):
    assert models.create(name, features_only=True).feature_info == models.feature_info(name)


def test_source_index_agrees_with_the_registry():
    # The Snakefile validates the paper registry against this index without importing torch.
    assert model_index.families() == {name: models.family(name) for name in models.list_models()}


def test_no_name_shadows_a_timm_model():
    ours = set(models.list_models())
    timm_own = {n for n in timm.list_models() if n not in ours}
    assert not ours & timm_own
    assert timm.create_model("botnet50").__class__.__name__ == "ResNet"


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(KeyError, match="registered models: botnet101"):
        models.create("botnet51")


def _size(model):
    return getattr(model, "img_size", (224, 224))


@pytest.mark.parametrize("name", NETWORKS)
def test_forward_and_backward_at_native_resolution(name):
    model = models.create(name, num_classes=10)
    x = torch.randn(1, 3, *_size(model))
    out = model(x)
    assert out.shape == (1, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_dense_features_at_a_non_square_detection_size(name):
    model = models.create(name, features_only=True)
    assert model.feature_info == models.feature_info(name)
    x = torch.randn(1, 3, 800, 1216)
    feats = model(x)
    for f, info in zip(feats, model.feature_info):
        assert f.shape == (1, info["num_chs"], 800 // info["reduction"], 1216 // info["reduction"])
    sum(f.mean() for f in feats).backward()


def _batch(h=192, w=256):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor([[20.0, 30.0, 150.0, 170.0], [90.0, 10.0, 240.0, 120.0]]))
    inst.gt_classes = torch.tensor([0, 5])
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 30:170, 20:150] = True
    masks[1, 10:120, 90:240] = True
    inst.gt_masks = BitMasks(masks)
    return [{"image": torch.rand(3, h, w) * 255, "instances": inst, "height": h, "width": w}]


def _train_step_and_predict(model, batch, image):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        return losses, model([{"image": image}])[0]


@pytest.mark.parametrize("framework", ["mask_rcnn", "retinanet"])
@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_detector_trains_one_step_and_predicts_on_cpu(name, framework):
    torch.manual_seed(0)
    builder = {"mask_rcnn": mask_rcnn, "retinanet": retinanet}[framework]
    model = instantiate(builder(name, num_classes=80, norm="GN"))
    _, out = _train_step_and_predict(model, _batch(), torch.rand(3, 192, 256) * 255)
    assert out["instances"].image_size == (192, 256)


@pytest.mark.parametrize("name", ["hornet_tiny_gf", "patchconvnet_s60"])
def test_cascade_mask_rcnn_trains_one_step_on_cpu(name):
    torch.manual_seed(0)
    cfg = cascade_mask_rcnn(name, num_classes=80, norm="GN", head_norm="GN")
    # Smoke scale: 64 proposals and RoIs per image instead of 1000 and 512 (three 4-conv heads per RoI).
    cfg.proposal_generator.post_nms_topk = (64, 64)
    cfg.roi_heads.batch_size_per_image = 64
    losses, out = _train_step_and_predict(instantiate(cfg), _batch(), torch.rand(3, 192, 256) * 255)
    assert {f"loss_box_reg_stage{i}" for i in range(3)} <= set(losses)
    assert out["instances"].image_size == (192, 256)


@pytest.mark.parametrize("name,head", [("lvt", "segformer"), ("hornet_tiny_7x7", "upernet"),
                                       ("patchconvnet_s60", "upernet")])
def test_semantic_segmentation_trains_one_step_on_cpu(name, head):
    torch.manual_seed(0)
    labels = torch.randint(0, 150, (128, 160))
    labels[:16] = 255  # ignored, as ADE20K's "other" class
    model = instantiate(semantic_segmentor(name, head, num_classes=150, head_norm="GN"))
    batch = [{"image": torch.rand(3, 128, 160) * 255, "sem_seg": labels}]
    losses, out = _train_step_and_predict(model, batch, torch.rand(3, 100, 130) * 255)
    assert ("loss_aux_sem_seg" in losses) == (head == "upernet")
    assert out["sem_seg"].shape == (150, 100, 130)


def test_lvt_panoptic_fpn_with_light_heads_has_the_readme_size():
    # lvt.md §C: Panoptic FPN + LVT, 5.4M parameters (one decimal). This builds 5.35M: detectron2's heads at the
    # official config's widths; the standard 256-channel heads would give 25M.
    model = instantiate(panoptic_fpn("lvt", heads="light"))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(5.4e6, rel=0.01)
    assert model.sem_seg_head.p2[0].norm.num_groups == 12 and model.roi_heads.box_head.fc1.out_features == 160


def test_panoptic_fpn_trains_one_step_on_cpu():
    torch.manual_seed(0)
    batch = _batch()
    stuff = torch.randint(1, 54, (192, 256))
    stuff[batch[0]["instances"].gt_masks.tensor.any(0)] = 0  # "things" pixels are class 0 of the stuff branch
    batch[0]["sem_seg"] = stuff
    model = instantiate(panoptic_fpn("lvt", norm="GN", heads="light"))
    losses, out = _train_step_and_predict(model, batch, torch.rand(3, 192, 256) * 255)
    assert {"loss_sem_seg", "loss_mask"} <= set(losses)
    segments, info = out["panoptic_seg"]
    assert segments.shape == (192, 256)


@pytest.mark.parametrize("name", [*FAMILY_REPRESENTATIVES, "lvt_cls", "resnet50_attnpool", "resnet50_torchvision"])
def test_a_checkpoint_looks_like_its_own_family(name):
    from models._registry import looks_like

    assert looks_like(models.create(name).state_dict()) == models.family(name)


def test_a_wrong_family_checkpoint_is_one_short_line(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("models"), "propagate", True)  # an engine's set-up may have cut it
    torch.save(models.create("hornet_tiny_7x7").state_dict(), tmp_path / "hornet.pth")
    with caplog.at_level("DEBUG", logger="models"):
        with pytest.raises(models.CheckpointError) as err:
            models.create("pvt_tiny", pretrained=tmp_path / "hornet.pth")
    line = str(err.value)
    assert "\n" not in line and len(line) < 600
    assert "does not match pvt_tiny" in line and "in all]" in line and "it looks like a hornet checkpoint" in line
    # The whole lists go to the log (DEBUG: the engines' log files keep them, the console does not).
    assert "downsample_layers.3.1.weight" in caplog.text

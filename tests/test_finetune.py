"""pipeline/finetune.py: the optimizer's parameter groups follow the official dense configs."""

import math

import numpy as np
import pytest

import pipeline.compat  # noqa: F401  (before detectron2)
from detectron2.data import transforms as T

from pipeline import experiments
from pipeline.finetune import (FinetuneConfig, FinetuneError, build_model, lr_layer, machines, param_groups,
                               train_augmentations)

STAGES = ["stages.0", "stages.1", "stages.2", "stages.3"]


@pytest.mark.parametrize("name, layer", [
    # ConvNeXt's LearningRateDecayOptimizerConstructor, layer_wise with num_layers 12 (HorNet's Cascade configs).
    ("downsample_layers.0.0.weight", 0), ("stages.0.1.gamma1", 1), ("downsample_layers.1.1.weight", 2),
    ("stages.1.2.dwconv.pwconv.weight", 2), ("downsample_layers.2.1.weight", 3), ("stages.2.0.norm1.weight", 3),
    ("stages.2.5.gamma2", 4), ("stages.2.17.pwconv2.weight", 8), ("downsample_layers.3.1.weight", 12),
    ("stages.3.1.gamma2", 12), ("norm2.weight", 13), (None, 13),
])
def test_layer_wise_ids_follow_the_official_constructor(name, layer):
    assert lr_layer(name, STAGES, "layer_wise", 12) == layer


@pytest.mark.parametrize("name, layer", [
    ("downsample_layers.2.1.weight", 0), ("stages.0.0.gamma1", 1), ("stages.3.1.gamma1", 4), ("norm3.bias", 7),
    (None, 7),
])
def test_stage_wise_ids_follow_the_official_constructor(name, layer):
    assert lr_layer(name, STAGES, "stage_wise", 6) == layer


def _lrs(model, groups):
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {name: by_param[id(p)] for name, p in model.named_parameters()}


def test_hornet_upernet_groups_use_the_recipe_decay(tmp_path):
    settings = experiments.finetune_settings("hornet_upernet", "hornet_tiny_7x7", "160k", "full", {}, 0)
    assert (settings["layer_decay"], settings["layer_decay_type"], settings["layer_decay_layers"]) == (
        0.9, "stage_wise", 6)  # hornet.md §D: stage-wise 0.9, num_layers 6 for T
    fields = {k: v for k, v in settings.items() if k in FinetuneConfig.__dataclass_fields__ and v is not None}
    fields["short_side"] = ",".join(map(str, fields["short_side"]))
    cfg = FinetuneConfig(backbone="hornet_tiny_7x7", pretrained="", data=str(tmp_path), work_dir=str(tmp_path),
                         output=str(tmp_path / "m.pth"), **fields)
    model = build_model(cfg)
    lrs = _lrs(model, param_groups(model, cfg))
    lr = 1e-4  # hornet.md §D
    net = "backbone.net."
    head = {lrs[n] for n, p in model.named_parameters() if n.startswith("sem_seg_head.") and p.ndim > 1}
    assert head == {(lr, 0.05)}
    assert math.isclose(lrs[net + "stages.3.0.pwconv1.weight"][0], lr * 0.9 ** 3)
    assert math.isclose(lrs[net + "stages.0.0.pwconv1.weight"][0], lr * 0.9 ** 6)
    assert math.isclose(lrs[net + "downsample_layers.0.0.weight"][0], lr * 0.9 ** 7)
    # Layer scales and norms are 1-d: no weight decay, as in the official constructor.
    assert lrs[net + "stages.3.0.gamma1"][1] == 0.0 and lrs[net + "norm3.weight"] == (lr, 0.0)


def test_unknown_decay_type_is_one_clear_error(tmp_path):
    cfg = FinetuneConfig(backbone="hornet_tiny_7x7", pretrained="", data=str(tmp_path), work_dir=str(tmp_path),
                         output=str(tmp_path / "m.pth"), task="upernet", layer_decay=0.9, layer_decay_type="blockwise")
    with pytest.raises(FinetuneError, match="blockwise.*stage_wise, layer_wise"):
        param_groups(build_model(cfg), cfg)


def test_hornet_cascade_augmentation_has_both_detr_branches(tmp_path):
    # hornet.md §D: short side in 480..800 (step 32, max 1333), or resize {400, 500, 600} -> crop 384-600 -> the same.
    settings = experiments.finetune_settings("hornet_cascade_mask_rcnn", "hornet_tiny_gf", "3x_ms", "full", {}, 0)
    cfg = FinetuneConfig(backbone="hornet_tiny_gf", pretrained="", data=str(tmp_path), work_dir=str(tmp_path),
                         output=str(tmp_path / "m.pth"), task="cascade_mask_rcnn",
                         short_side=",".join(map(str, settings["short_side"])), max_size=settings["max_size"],
                         crop_branch_sides=",".join(map(str, settings["crop_branch_sides"])),
                         crop_branch_size=",".join(map(str, settings["crop_branch_size"])))
    augs = T.AugmentationList(train_augmentations(cfg))
    np.random.seed(0)
    shapes = set()
    for _ in range(40):
        aug_input = T.AugInput(np.zeros((1000, 1500, 3), np.uint8))
        augs(aug_input)
        h, w = aug_input.image.shape[:2]
        assert min(h, w) in range(480, 801, 32) or max(h, w) == 1333
        shapes.add(round(w / h, 2))
    # Resizing alone keeps the 3:2 aspect; crops of 384-600 px squares and slabs change it.
    assert 1.5 in shapes and len(shapes) > 3


def test_nodes_come_from_the_job_environment(monkeypatch):
    """pipeline/launch.py's one task per node tells detectron2's launch the node count, rank and rendezvous."""
    for key in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert machines() == (1, 0, "auto")
    for key, value in {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "gpu-a", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    assert machines() == (2, 1, "tcp://gpu-a:29500")
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(FinetuneError, match="MASTER_ADDR is not set"):
        machines()

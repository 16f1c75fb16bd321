"""pipeline/finetune.py: the optimizer's parameter groups follow the official dense configs."""

import dataclasses
import math

import numpy as np
import pytest

import models.compat  # noqa: F401  (before detectron2)
from detectron2.data import transforms as T

from pipeline import registry, settings
from pipeline.detection import build_model
from pipeline.finetune import FinetuneError, _resize, lr_layer, machines, param_groups, train_augmentations
from pipeline.settings import FinetuneSettings

SMOKE = registry.load_yaml(registry.CONFIG_DIR / "config.yaml")["smoke"]


def _settings(backbone, recipe, schedule) -> FinetuneSettings:
    """The engine config a full-scale job of the recipe gets, as its settings file gives it."""
    doc = settings.resolve("finetune", backbone, recipe, 0, "full", "quick", SMOKE, schedule)
    names = {f.name for f in dataclasses.fields(FinetuneSettings)}
    return FinetuneSettings(backbone=backbone, **{k: v for k, v in doc["values"].items() if k in names})

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


def test_hornet_upernet_groups_use_the_recipe_decay():
    cfg = _settings("hornet_tiny_7x7", "hornet_upernet", "160k")
    assert (cfg.layer_decay, cfg.layer_decay_type, cfg.layer_decay_layers) == (
        0.9, "stage_wise", 6)  # hornet.md §D: stage-wise 0.9, num_layers 6 for T
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


def test_unknown_decay_type_is_one_clear_error():
    cfg = FinetuneSettings(backbone="hornet_tiny_7x7", framework="upernet", layer_decay=0.9,
                           layer_decay_type="blockwise")
    with pytest.raises(FinetuneError, match="blockwise.*stage_wise, layer_wise"):
        param_groups(build_model(cfg), cfg)


def test_hornet_cascade_augmentation_has_both_detr_branches():
    # hornet.md §D: short side in 480..800 (step 32, max 1333), or resize {400, 500, 600} -> crop 384-600 -> the same.
    cfg = _settings("hornet_tiny_gf", "hornet_cascade_mask_rcnn", "3x_ms")
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


def test_semantic_rescale_follows_mmseg():
    # mmseg's ADE20K rescale: short side 512 x [0.5, 2.0], long side 2048 x 2.0, then a 512 crop (PVT §5.3).
    cfg = _settings("pvt_tiny", "pvt_semantic_fpn", "80k")
    resize = _resize(cfg)
    assert (list(resize.short_edge_length), resize.max_size, resize.sample_style) == ([256, 1024], 4096, "range")
    assert (cfg.crop, cfg.poly_power) == (512, 0.9)


def test_an_empty_pretrained_file_is_one_line(tmp_path):
    from conftest import PYTHON, run

    settings.for_engine(tmp_path / "settings.yaml", "finetune", "pvt_tiny", iters=1)
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "coco").mkdir()
    proc = run([PYTHON, "-m", "pipeline.finetune", "--settings", str(tmp_path / "settings.yaml"), "--pretrained",
                str(tmp_path / "empty.pth"), "--data", str(tmp_path / "coco"), "--work-dir", str(tmp_path / "state"),
                "--output", str(tmp_path / "model.pth")], check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line or "Traceback" in line]
    assert len(errors) == 1 and "empty.pth: not a loadable weights-only checkpoint" in errors[0]


def test_a_non_finite_loss_stops_in_one_line_with_the_iteration_and_lr():
    import torch
    from detectron2.utils.events import EventStorage
    from torch import nn

    from pipeline.engine import TrainingError
    from pipeline.finetune import ClippedTrainer

    class Diverged(nn.Module):  # a detector's loss dict, one term gone to NaN
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, batch):
            return {"loss_cls": self.w.sum(), "loss_box_reg": self.w.sum() * float("nan")}

    model = Diverged()
    trainer = ClippedTrainer(model, iter([[{}]] * 3), torch.optim.SGD(model.parameters(), lr=0.02), clip=0.0)
    with EventStorage(0), pytest.raises(TrainingError) as err:
        trainer.iter = 0
        trainer.run_step()
    assert str(err.value) == "loss is nan at iteration 0 (lr 2.00e-02); lower the lr or check the data"
    assert model.w.item() == 1.0  # stopped before the optimizer stepped


def _finetune_command(data, out, iters):
    from conftest import PYTHON

    settings.for_engine(out / "settings.yaml", "finetune", "pvt_tiny", framework="mask_rcnn", iters=iters,
                        batch_size=2, short_side=[128], max_size=192, roi_batch_size_per_image=64,
                        rpn_post_nms_topk_train=200, warmup_iters=1, checkpoint_every=1)
    return [PYTHON, "-m", "pipeline.finetune", "--settings", str(out / "settings.yaml"), "--data", str(data),
            "--work-dir", str(out / "state"), "--output", str(out / "model.pth"), "--log-file", str(out / "log")]


def test_a_killed_and_resumed_run_keeps_one_state_as_an_uninterrupted_one(embedded_data, tmp_path):
    """Killed after its first periodic state, the run resumes from it; that state then gives way to the next
    one like any other, and the final state replaces the last periodic one: one state at a time, whatever
    happened to the run (finetune.StateCheckpointer, finetune._keep_resumed)."""
    import os
    import signal
    import subprocess
    import time

    from conftest import ROOT, run

    command = _finetune_command(embedded_data / "coco-embedded", tmp_path, 3)
    first = tmp_path / "state" / "model_0000000.pth"
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (tmp_path / "model.pth").exists(), "the run was not killed after its first state"
    run(command, env={"OMP_NUM_THREADS": "1"})
    assert f"resuming from {first} after iteration 1 of 3" in (tmp_path / "log").read_text()
    assert sorted(p.name for p in (tmp_path / "state").glob("model_*.pth")) == ["model_final.pth"]
    assert (tmp_path / "state" / "last_checkpoint").read_text() == "model_final.pth"

"""pipeline/settings.py: one resolved settings file per job, under the recipe's keys with their provenance;
smoke scale shrinks length, batch and sizes only, and says what it replaced."""

import dataclasses

import pytest
import yaml

from pipeline import registry, settings

CONFIG = registry.load_yaml(registry.CONFIG_DIR / "config.yaml")


def _resolve(job, backbone, recipe, schedule=None, scale="full", profile="quick"):
    return settings.resolve(job, backbone, recipe, 0, scale, profile, CONFIG["smoke"], schedule)


def test_smoke_settings_shrink_length_and_sizes_only():
    full = _resolve("finetune", "pvt_tiny", "pvt_mask_rcnn", "3x_ms")["values"]
    doc = _resolve("finetune", "pvt_tiny", "pvt_mask_rcnn", "3x_ms", scale="smoke")
    small = doc["values"]
    assert (full["epochs"], full["steps"], full["short_side"], full["sample"]) == (36, [27, 33], [640, 800], "range")
    quick = CONFIG["smoke"]["quick"]["finetune"]
    assert small["iters"] == quick["iters"] and small["epochs"] == 0
    assert doc["smoke"] == {"profile": "quick", "replaced": {"epochs": 36, "batch_size": 16, "warmup_iters": 500,
                                                             "short_side": [640, 800], "sample": "range",
                                                             "max_size": 1333}}
    for key in ("framework", "optimizer", "lr", "weight_decay", "warmup_ratio"):
        assert small[key] == full[key]
    pre = _resolve("pretrain", "pvt_tiny", "pvt")["values"]
    # PVT §5.1: 300 epochs at batch 1024; lr 5e-4 per 512 images (1e-3 at 1024, tests/test_pretrain.py).
    assert (pre["epochs"], pre["batch_size"], pre["lr"], pre["lr_batch"]) == (300, 1024, 5e-4, 512)


def test_every_value_says_where_it_comes_from():
    doc = _resolve("finetune", "pvt_tiny", "pvt_mask_rcnn", "1x", scale="smoke")
    assert set(doc["provenance"]) == set(doc["values"])
    assert doc["provenance"]["lr"] == {"from": "paper", "ref": "§5.2 (the released Mask R-CNN configs use 2e-4)"}
    assert doc["provenance"]["epochs"]["from"] == "smoke" and "config/config.yaml smoke.quick" in \
        doc["provenance"]["iters"]["ref"]
    assert doc["provenance"]["short_side"]["from"] == "smoke"
    assert doc["provenance"]["steps"]["ref"].startswith("schedule 1x: ")
    assert doc["provenance"]["roi_batch_size_per_image"]["from"] == "smoke"
    full = _resolve("finetune", "pvt_tiny", "pvt_mask_rcnn", "1x")
    assert full["provenance"]["roi_batch_size_per_image"]["from"] == "engine"


def test_size_keys_replace_only_the_resizing_a_job_does():
    semantic = _resolve("finetune", "pvt_tiny", "pvt_semantic_fpn", "80k", scale="smoke")
    assert (semantic["values"]["scale"], semantic["values"]["crop"]) == ([192, 128], 128)
    assert "short_side" not in semantic["smoke"]["replaced"]
    detection = _resolve("finetune", "pvt_tiny", "pvt_mask_rcnn", "1x", scale="smoke")
    assert "crop" not in detection["smoke"]["replaced"] and detection["values"]["scale"] is None


def test_evaluation_reads_the_test_keys_and_training_the_others():
    ev = _resolve("evaluate", "hornet_small_gf", "hornet_upernet", "160k")["values"]
    ft = _resolve("finetune", "hornet_small_gf", "hornet_upernet", "160k")["values"]
    assert set(ev) == {f.name for f in dataclasses.fields(settings.EvaluateSettings)} - {"backbone", "seed"}
    assert not set(ft) & set(settings.TEST_KEYS)


def test_a_profile_without_a_length_is_refused():
    profiles = {"short": {**CONFIG["smoke"]["quick"], "finetune": {"batch_size": 1}}}
    with pytest.raises(registry.ConfigError, match="smoke.short.finetune.iters"):
        settings.resolve("finetune", "pvt_tiny", "pvt_mask_rcnn", 0, "smoke", "short", profiles, "1x")


def test_file_round_trip_builds_the_engine_config(tmp_path):
    (tmp_path / "coco.manifest.json").write_text('{"index_sha256": "' + "a" * 64 + '"}')
    doc = _resolve("finetune", "hornet_tiny_gf", "hornet_cascade_mask_rcnn", "3x_ms")
    path = tmp_path / "job" / "settings.yaml"
    written = settings.write(path, doc, "coco", str(tmp_path))
    assert written["dataset"] == {"name": "coco", "root": str(tmp_path / "coco"),
                                  "manifest": str(tmp_path / "coco.manifest.json"), "index_sha256": "a" * 64}
    cfg, unread = settings.engine_config(path, "finetune")
    assert isinstance(cfg, settings.FinetuneSettings) and cfg.backbone == "hornet_tiny_gf"
    # hornet.md §D: layer-wise decay 0.7 over 12 layers, drop path 0.4 for T.
    assert (cfg.layer_decay, cfg.layer_decay_layers, cfg.drop_path) == (0.7, 12, 0.4)
    assert cfg.crop_branch == {"short_side": [400, 500, 600], "crop": [384, 600]}
    assert unread == ["dataset", "gpus", "hours", "nodes"]
    with pytest.raises(registry.ConfigError, match="settings of a finetune job, not pretrain"):
        settings.engine_config(path, "pretrain")


def test_a_file_that_is_no_settings_file_is_one_line(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"lr": 1}))
    with pytest.raises(registry.ConfigError, match="not a settings file"):
        settings.read(path)

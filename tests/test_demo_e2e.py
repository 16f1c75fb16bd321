"""The whole demo DAG for real, shrunk further, as `make demo` runs it: data -> pretrain -> Mask R-CNN ->
pycocotools -> report (DVC's stages are the tables', tests/test_dvcgen.py)."""

import json

import yaml

from conftest import BIN, ROOT, copy_project, run

SMOKE = {
    "pretrain": {"steps": 4, "batch_size": 4, "img_size": 64, "checkpoint_every": 2, "warmup_steps": 1},
    "finetune": {"iters": 2, "batch_size": 1, "short_side": [128], "max_size": 192, "roi_batch_size_per_image": 64,
                 "rpn_post_nms_topk_train": 200, "checkpoint_every": 1, "warmup_iters": 1},
    "evaluate": {"test_size": [128, 192]},
}


def _copy_project(dst, data_root):
    copy_project(dst)
    config = yaml.safe_load((dst / "config" / "config.yaml").read_text())
    config["data_root"] = str(data_root)
    for section, values in SMOKE.items():
        config["smoke"]["demo"][section].update(values)
    (dst / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def test_demo_runs_the_whole_dag_on_the_embedded_data(tmp_path):
    # A project folder and a data root whose paths hold a space and a quote.
    project = tmp_path / "my project's copy"
    data = tmp_path / "shared data's root"
    project.mkdir()
    _copy_project(project, data)
    demo = [str(BIN / "snakemake"), "--profile", "profiles/local", "demo", "--config", "scale=smoke",
            "smoke_profile=demo"]
    assert f"\t.venv/bin/snakemake {' '.join(demo[1:])}\n" in (ROOT / "Makefile").read_text()  # make demo's

    run(demo, cwd=project, timeout=1200)

    report = (project / "reports" / "smoke" / "demo.md").read_text()
    assert "SMOKE SCALE" in report and "| box_AP |" in report and "| 36.7 |" in report  # PVT Table 4, PVT-Tiny 1x
    evaluation = project / "results/evaluate/coco-embedded/mask_rcnn/pvt_tiny/pvt_mask_rcnn/1x/seed0"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert yaml.safe_load((evaluation / "settings.yaml").read_text())["smoke"]["profile"] == "demo"
    assert metrics["evaluator"] == "pycocotools COCOeval" and metrics["images"] == 1
    assert isinstance(metrics["box_AP"], float) and isinstance(metrics["mask_AP"], float)
    for manifest in ("imagenet", "coco", "ade20k"):
        m = json.loads((data / f"{manifest}-embedded.manifest.json").read_text())
        assert m["files"] > 0 and len(m["index_sha256"]) == 64
    ade = data / "ade20k-embedded/ADEChallengeData2016"
    assert sorted(p.name for p in (ade / "annotations" / "validation").iterdir()) == ["ADE_val_00000001.png"]

"""The whole demo DAG for real, shrunk further, under `dvc repro`: data -> pretrain -> Mask R-CNN -> pycocotools
-> report, with checkpoints and metrics tracked by DVC and pushed to a local remote."""

import json
import os
import shutil

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
    (dst / ".dvc").mkdir()
    shutil.copy2(ROOT / ".dvc" / "config", dst / ".dvc" / "config")
    (dst / ".gitignore").write_text("/.venv\n/data/\n/logs/\n/.snakemake/\n__pycache__/\n")
    config = yaml.safe_load((dst / "config" / "config.yaml").read_text())
    config["data_root"] = str(data_root)
    for section, values in SMOKE.items():
        config["smoke"]["demo"][section].update(values)
    (dst / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def test_dvc_repro_runs_the_demo_dag_and_tracks_its_artifacts(tmp_path):
    # A project folder and a data root whose paths hold a space and a quote.
    project = tmp_path / "my project's copy"
    data = tmp_path / "shared data's root"
    project.mkdir()
    _copy_project(project, data)
    env = {"PATH": f"{BIN}:{os.environ['PATH']}"}
    run(["git", "init", "-q"], cwd=project)
    dvc = str(BIN / "dvc")

    run([dvc, "repro"], cwd=project, env=env, timeout=1200)

    report = (project / "reports" / "demo.md").read_text()
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

    shown = run([dvc, "metrics", "show"], cwd=project, env=env).stdout
    assert "box_AP" in shown and "top1" in shown
    status = run([dvc, "status"], cwd=project, env=env).stdout
    assert "up to date" in status

    remote = tmp_path / "remote"
    run([dvc, "remote", "add", "--local", "--default", "local", str(remote)], cwd=project, env=env)
    run([dvc, "push"], cwd=project, env=env)
    cached = [p for p in remote.rglob("*") if p.is_file()]
    assert len(cached) >= 4  # two checkpoints and two metrics files

"""pipeline/gpu_check.py: every GPU path it drives runs on CPU at tiny sizes, and a failed path fails the check."""

import json
import math

from conftest import PYTHON, run

from pipeline import gpu_check


def test_every_path_runs_on_cpu_at_tiny_sizes(tmp_path):
    # One thread: the other test worker shares the two cores.
    proc = run([PYTHON, "-m", "pipeline.gpu_check", "--device", "cpu", "--tiny", "--out", str(tmp_path)], timeout=600,
               env={"OMP_NUM_THREADS": "1"})
    doc = json.loads((tmp_path / "gpu_tiny.json").read_text())
    assert doc["failures"] == []
    models = [m for m, _ in gpu_check.PRETRAIN]
    ways = {(r["model"], r["way"].split(":")[0]) for r in doc["pretrain"]}
    assert ways == {(m, w) for m in models for w in ("project", "reference")}
    assert all(r["images_per_s"] > 0 and math.isfinite(r["loss_last"]) and r["amp"] == "bf16" for r in doc["pretrain"])
    # The reference ways are the benchmark's (pipeline/bench.py): explicit attention, elementwise LayerNorm ...
    reference = {r["model"]: r for r in doc["pretrain"] if r["way"] != "project"}
    assert reference["pvt_small"]["overrides"] == {"fused_attn": False}
    hornet = reference["hornet_tiny_gf"]
    assert hornet["overrides"] == {"fused_norm": False} and not hornet["channels_last"]
    assert not reference["resnet50_baseline"]["channels_last"]
    assert [r["framework"] for r in doc["detection"]] == ["mask_rcnn", "cascade_mask_rcnn", "retinanet"]
    assert all(r["seconds_per_iter"] > 0 and math.isfinite(r["total_loss"]) for r in doc["detection"])
    assert [(r["path"].split()[0], r["backend"]) for r in doc["ddp"]] == [("torchrun", "gloo"), ("detectron2", "gloo")]
    md = (tmp_path / "gpu_tiny.md").read_text()
    assert md in proc.stdout and "every path passed" in md and "| pvt_small | project |" in md
    assert doc["environment"]["torch"] and doc["environment"]["detectron2"] == "0.6"


def test_a_failed_path_is_named_and_fails_the_check(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(gpu_check, "PRETRAIN", (("pvt_tiny", "no_such_recipe"),))
    monkeypatch.setattr(gpu_check, "check_detection", lambda *a: None)
    monkeypatch.setattr(gpu_check, "check_ddp", lambda *a: None)
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)]) == 1
    doc = json.loads((tmp_path / "gpu_tiny.json").read_text())
    assert [f["what"] for f in doc["failures"]] == ["pretrain pvt_tiny (project)", "pretrain pvt_tiny (reference: "
                                                    "explicit attention)"]
    assert "no_such_recipe" in doc["failures"][0]["error"]
    assert "2 path(s) failed" in (tmp_path / "gpu_tiny.md").read_text()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: 2 path(s) failed: pretrain pvt_tiny (project)")


def test_without_a_gpu_the_full_check_says_so_in_one_line(tmp_path):
    proc = run([PYTHON, "-m", "pipeline.gpu_check", "--out", str(tmp_path)], check=False,
               env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: no CUDA device visible; run on a GPU machine, or "
                                                "`--device cpu --tiny` to check the paths"]
    assert not list(tmp_path.iterdir())

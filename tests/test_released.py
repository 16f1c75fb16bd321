"""pipeline/released.py: the catalogue, fetching against the publisher's hash or the lock file, loading real
release layouts, and one paper's releases evaluated through the DAG at smoke scale, served from 127.0.0.1."""

import argparse
import json
import pickle

import pytest
import torch
import yaml

import models
from conftest import BIN, PYTHON, copy_project, run
from pipeline import released
from pipeline.data.download import DownloadError
from test_data_download import Server
from test_detection import _Touch
from test_pvt import _to_official_layout

PVT = ("pvt_tiny", "pvt_small", "pvt_medium", "pvt_large")


def _release(name: str, seed: int = 0) -> bytes:
    """A checkpoint in the layout whai362/PVT releases ({'model': ...}), with DeiT-style run arguments."""
    torch.manual_seed(seed)
    state = _to_official_layout(models.create(name).state_dict())
    from io import BytesIO

    buf = BytesIO()
    torch.save({"model": state, "args": argparse.Namespace(model=name, lr=5e-4), "epoch": 299}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def test_the_catalogue_names_every_release_and_where_there_is_none():
    assert set(released.targets()) == {"pvt_released", "hornet_released", "lvt_released", "patchconvnet_released"}
    assert [c.backbone for c in released.targets()["pvt_released"]] == list(PVT)
    assert "BoTNet's authors released no weights" in released.no_release()["botnet"]


def test_first_download_records_the_hash_and_a_later_mismatch_is_one_line(server, tmp_path):
    ckpt = released.catalogue()["pvt_tiny.pth"]
    server.files["pvt_tiny.pth"] = _release("pvt_tiny")
    lock = tmp_path / "released.lock"
    url = f"{server.url}/pvt_tiny.pth"
    record = released.fetch(ckpt, str(tmp_path / "data"), url, lock_file=lock)
    assert record["hash"] == "recorded on first download"
    assert yaml.safe_load(lock.read_text()) == {"pvt_tiny.pth": record["sha256"]}
    # The file is the same from a second data root: checked against the lock, not recorded again.
    assert released.fetch(ckpt, str(tmp_path / "data2"), url, lock_file=lock)["hash"] == "lock"
    server.files["pvt_tiny.pth"] = _release("pvt_tiny", seed=1)  # the publisher replaced it
    with pytest.raises(DownloadError) as err:
        released.fetch(ckpt, str(tmp_path / "data3"), url, lock_file=lock, retries=0)
    message = str(err.value)
    assert "\n" not in message and f"sha256 mismatch: expected {record['sha256']}" in message
    assert f"(hash recorded in {lock})" in message


def test_a_release_behind_a_browser_needs_its_local_path():
    with pytest.raises(DownloadError, match=r"lvt_imagenet.pth.tar: its host needs a browser; download it from "
                                            r"https://github.com/Chenglin-Yang/LVT#classification and set "
                                            r"released_paths.lvt_imagenet.pth.tar in config/config.yaml"):
        released.source(released.catalogue()["lvt_imagenet.pth.tar"])


def test_a_release_that_needs_arbitrary_objects_is_refused_unrun(tmp_path):
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"model": {}, "x": _Touch(tmp_path / "ran")}))
    (tmp_path / "settings.yaml").write_text(yaml.safe_dump(
        {"job": "evaluate_released", "backbone": "pvt_tiny", "dataset": {"root": str(tmp_path / "imagenet")},
         "values": {"resolution": 224, "crop_pct": 0.875, "interpolation": "bicubic", "batch_size": 2,
                    "checkpoint": "evil.pth"}}))
    (tmp_path / "imagenet").mkdir()
    proc = run([PYTHON, "-m", "pipeline.released", "evaluate", "--settings", str(tmp_path / "settings.yaml"),
                "--weights", str(tmp_path / "evil.pth"), "--metrics", str(tmp_path / "m.json")], check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "not a loadable weights-only checkpoint" in errors[0]
    assert not (tmp_path / "ran").exists()


def test_pvt_releases_are_evaluated_through_the_dag_at_smoke_scale(server, embedded_data, tmp_path):
    project = copy_project(tmp_path / "project")
    for name in PVT:
        server.files[f"{name}.pth"] = _release(name)
    (project / "released-test.yaml").write_text(yaml.safe_dump({"released_paths": {
        f"{name}.pth": f"{server.url}/{name}.pth" for name in PVT}}))
    cmd = [BIN / "snakemake", "--profile", "profiles/local", "--configfiles", "config/config.yaml",
           "released-test.yaml", "--config", "scale=smoke", f"data_root={embedded_data}", "--", "pvt_released"]
    dry = run([*cmd[:-2], "-n", *cmd[-2:]], cwd=project).stdout
    assert "rule pretrain:" not in dry and "rule finetune:" not in dry and "rule evaluate_released:" in dry
    run(cmd, cwd=project, timeout=1200)
    table = json.loads((project / "results/tables/pvt_released.json").read_text())
    assert [r["id"] for r in table["rows"]] == list(PVT)
    assert all(isinstance(r["measured"]["top1"], float) for r in table["rows"])
    assert {r["released"]["hash"] for r in table["rows"]} == {"recorded on first download"}
    assert set(yaml.safe_load((project / "config/released.lock").read_text())) == {f"{n}.pth" for n in PVT}
    report = (project / "reports/pvt_released.md").read_text()
    assert "the authors' released checkpoint `pvt_tiny.pth`" in report
    assert "hash recorded on first download" in report
    assert "MACs" in report  # measured from the built classifier beside the paper's


def test_fine_tuning_from_released_weights_drops_the_pretraining_jobs(tmp_path):
    from conftest import job_counts
    from pipeline import plan

    project = copy_project(tmp_path / "project")
    cmd = [BIN / "snakemake", "--profile", "profiles/local", "-n", "pvt_table4", "--config", "data_root=data"]
    everywhere = run([*cmd, "pretrain_source=released"], cwd=project)
    counts = job_counts(everywhere.stdout)
    assert "pretrain" not in counts and counts["import_released"] == 4 and counts["fetch_weights"] == 4
    warning = next(line for line in (everywhere.stdout + everywhere.stderr).splitlines()
                   if "no released checkpoint for" in line)
    assert "resnet50_torchvision" in warning and "pvt_" not in warning
    one = job_counts(run([*cmd, "pretrain_source={default: ours, pvt_small: released}"], cwd=project).stdout)
    assert (one["import_released"], one["pretrain"]) == (1, 3)
    ours = plan.plan(["pvt_table4"], plan.load_config(["data_root=data"]), root=project)
    mine = plan.plan(["pvt_table4"], plan.load_config(["data_root=data", "pretrain_source=released"]), root=project)
    pretraining = sum(r["gpu_hours"] for r in ours["jobs"] if r["rule"] == "pretrain")
    assert pretraining > 0 and mine["total"]["gpu_hours"] == ours["total"]["gpu_hours"] - pretraining
    assert {r["rule"] for r in mine["jobs"]} >= {"import_released", "finetune", "evaluate"}


def test_a_released_checkpoint_enters_fine_tuning_in_the_projects_layout(tmp_path):
    """fetch_weights links a local copy (released_paths), import_released converts it: the weights are the
    release's, key for key."""
    project = copy_project(tmp_path / "project")
    (tmp_path / "pvt_tiny.pth").write_bytes(_release("pvt_tiny"))
    (project / "released-test.yaml").write_text(yaml.safe_dump({"released_paths": {
        "pvt_tiny.pth": str(tmp_path / "pvt_tiny.pth")}}))
    target = "results/pretrain/imagenet-embedded/pvt_tiny/released/seed0/model.pth"
    run([BIN / "snakemake", "--profile", "profiles/local", "--configfiles", "config/config.yaml",
         "released-test.yaml", "--config", "scale=smoke", f"data_root={tmp_path / 'data'}", "--", target],
        cwd=project)
    torch.manual_seed(0)
    reference = models.create("pvt_tiny").state_dict()
    imported = torch.load(project / target, weights_only=True)["model"]
    assert imported.keys() == reference.keys() and all(torch.equal(imported[k], reference[k]) for k in reference)

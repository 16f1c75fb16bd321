"""pipeline/released.py: the catalogue, fetching against the publisher's hash or the lock file, loading real
release layouts, and one paper's releases evaluated through the DAG at smoke scale, served from 127.0.0.1."""

import argparse
import json
import pickle

import pytest
import torch
import yaml

import models
from conftest import BIN, PYTHON, copy_project, job_counts, run
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
    evaluated = [(c.kind, c.backbone) for c in released.targets()["pvt_released"]]
    assert evaluated == [("imagenet1k", b) for b in PVT] + [("segmentor", b) for b in PVT]
    assert {c.kind for c in released.listed_only("pvt")} == {"detector"}
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


def test_pvt_releases_are_fetched_and_evaluated_through_the_dag_at_smoke_scale(server, embedded_data, tmp_path):
    project = copy_project(tmp_path / "project")
    for name in PVT:
        server.files[f"{name}.pth"] = _release(name)
    (project / "released-test.yaml").write_text(yaml.safe_dump({"released_paths": {
        f"{name}.pth": f"{server.url}/{name}.pth" for name in PVT}}))
    cmd = [BIN / "snakemake", "--profile", "profiles/local", "--configfiles", "config/config.yaml",
           "released-test.yaml", "--config", "scale=smoke", f"data_root={embedded_data}", "--"]
    dry = job_counts(run([*cmd[:-1], "-n", "--", "pvt_released"], cwd=project).stdout)
    assert (dry["fetch_weights"], dry["convert_released"], dry["evaluate_released"]) == (8, 4, 8)
    assert "pretrain" not in dry and "finetune" not in dry
    # The classifiers (the semantic FPN segmentors are behind Google Drive: tests/test_released.py's LVT test
    # runs a whole `<paper>_released` target with its segmentor).
    metrics = [f"results/released/imagenet-embedded/{name}/{name}/metrics.json" for name in PVT]
    run([*cmd, *metrics], cwd=project, timeout=1200)
    assert all(isinstance(json.loads((project / m).read_text())["top1"], float) for m in metrics)
    assert set(yaml.safe_load((project / "config/released.lock").read_text())) == {f"{n}.pth" for n in PVT}


def test_fine_tuning_from_released_weights_drops_the_pretraining_jobs(tmp_path):
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


def _saved(obj) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _lvt_classifier(seed: int = 0):
    """lvt_imagenet.pth.tar as LVT's timm-based training script saves it: {'state_dict': ...} in the official
    `backbone.{stage}` layout (lvt.md §E), with the run's arguments."""
    from test_lvt import _official_layout

    torch.manual_seed(seed)
    model = models.create("lvt_cls")
    return model, {"state_dict": _official_layout(model.state_dict()), "epoch": 299, "arch": "lvt_cls",
                   "args": argparse.Namespace(model="lvt_cls")}


def _hornet_classifier(seed: int = 0):
    """HorNet's main.py saves {'model', 'model_ema', ...}; the official evaluation reads `model` (its default
    `--model_key model|module`), as the loader does."""
    torch.manual_seed(seed)
    model = models.create("hornet_tiny_7x7")
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    return model, {"model": model.state_dict(), "model_ema": ema, "epoch": 299,
                   "args": argparse.Namespace(model="hornet_tiny_7x7")}


def _patchconvnet_classifier(seed: int = 0):
    """DeiT's main.py saves {'model', 'optimizer', 'lr_scheduler', 'epoch', 'args'}; the official layout is the
    project's (patchconvnet.md §E)."""
    torch.manual_seed(seed)
    model = models.create("patchconvnet_s60")
    return model, {"model": model.state_dict(), "epoch": 399, "args": argparse.Namespace(model="S60", lr=1e-3)}


@pytest.mark.parametrize("make, name", [(_lvt_classifier, "lvt_imagenet.pth.tar"),
                                        (_hornet_classifier, "hornet_tiny_7x7.pth"),
                                        (_patchconvnet_classifier, "s60_224_1k.pth")])
def test_each_official_release_layout_is_fetched_and_gives_the_native_logits(server, tmp_path, make, name):
    native, saved = make()
    server.files[name] = _saved(saved)
    ckpt = released.catalogue()[name]
    released.fetch(ckpt, str(tmp_path / "data"), f"{server.url}/{name}", lock_file=tmp_path / "released.lock")
    loaded = models.create(ckpt.backbone, pretrained=released.weights_path(str(tmp_path / "data"), ckpt.paper, name))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), native.eval()(x))


def _segformer_lvt_release() -> bytes:
    """segformer_lvt_ade20k.pth as LVT's SegFormer code base saves it: mmcv's {'meta', 'state_dict'} with the
    backbone under `backbone.backbone.{stage}` and the SegFormer head's keys, including the `conv_seg` classifier
    that head builds and never applies (lvt.md §D-E)."""
    from detectron2.config import instantiate
    from test_lvt import _official_layout

    from models.dense import semantic_segmentor

    torch.manual_seed(0)
    model = instantiate(semantic_segmentor("lvt", "segformer", num_classes=150))
    state = _official_layout(model.backbone.net.state_dict(), prefix="backbone.")
    state.update({f"decode_head.{k}": v for k, v in model.sem_seg_head.state_dict().items()})
    state.update({"decode_head.conv_seg.weight": torch.zeros(150, 128, 1, 1), "decode_head.conv_seg.bias":
                  torch.zeros(150)})
    return _saved({"meta": {"iter": 160000, "CLASSES": ("wall", "building")}, "state_dict": state})


def test_lvt_releases_classifier_and_segmentor_are_evaluated_through_the_dag(server, embedded_data, tmp_path):
    """`lvt_released` at smoke scale: the classifier on the embedded ImageNet, the SegFormer segmentor converted
    and evaluated on the embedded ADE20K, the detector and the dense backbone listed with why they are not."""
    project = copy_project(tmp_path / "project")
    server.files["lvt_imagenet.pth.tar"] = _saved(_lvt_classifier()[1])
    server.files["segformer_lvt_ade20k.pth"] = _segformer_lvt_release()
    (project / "released-test.yaml").write_text(yaml.safe_dump({"released_paths": {
        name: f"{server.url}/{name}" for name in ("lvt_imagenet.pth.tar", "segformer_lvt_ade20k.pth")}}))
    cmd = [BIN / "snakemake", "--profile", "profiles/local", "--configfiles", "config/config.yaml",
           "released-test.yaml", "--config", "scale=smoke", f"data_root={embedded_data}", "--", "lvt_released"]
    run(cmd, cwd=project, timeout=1200)
    table = json.loads((project / "results/tables/smoke/lvt_released.json").read_text())
    rows = {r["id"]: r for r in table["rows"]}
    assert set(rows) == {"lvt_lvt_cls", "segformer_lvt"}
    assert isinstance(rows["lvt_lvt_cls"]["measured"]["top1"], float)
    seg = rows["segformer_lvt"]
    assert isinstance(seg["measured"]["mIoU"], float) and seg["recipe"] == "lvt_segformer"
    assert seg["released"]["kind"] == "segmentor"
    model_settings = yaml.safe_load((project / seg["released"]["model_settings"]).read_text())
    assert model_settings["values"]["framework"] == "segformer" and model_settings["scale"] == "full"
    assert {n["id"]: n["why"][:30] for n in table["not_run"]} == {
        "panoptic_fpn_lvt_fpn_coco.pth": "an mmdet detector: this projec",
        "lvt_imagenet_pretrained.pth.tar": "the ImageNet-trained backbone "}
    report = (project / "reports/smoke/lvt_released.md").read_text()
    assert "the authors' released checkpoint `lvt_imagenet.pth.tar`" in report
    assert "hash recorded on first download" in report
    assert "MACs" in report  # measured from the built classifier beside the paper's
    assert "the authors' released checkpoint `segformer_lvt_ade20k.pth`" in report
    assert "an mmdet detector" in report

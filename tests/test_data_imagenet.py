"""pipeline/data/imagenet.py: ImageNet-1k prepared from miniature archives in the official layout."""

import io
import tarfile

import numpy as np
import pytest
from scipy.io import savemat

from pipeline.data.extract import ExtractError, extract
from pipeline.data.imagenet import (DEVKIT_META, DEVKIT_VAL_GT, extract_train, prepare, read_classes,
                                    read_devkit)

# Three leaf classes (ILSVRC2012_ID 1..3 in wnid order, as in the real devkit) and one parent synset.
SYNSETS = [(1, "n01440764", "tench, Tinca tinca", 0), (2, "n01443537", "goldfish, Carassius auratus", 0),
           (3, "n01484850", "great white shark", 0), (1001, "n00001740", "entity", 5)]
VAL_LABELS = [2, 1, 3, 3, 1]  # ground truth of ILSVRC2012_val_00000001..5 (1-based ids)


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _devkit(path):
    synsets = np.array([s for s in SYNSETS], dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"),
                                                    ("num_children", "O")])
    buf = io.BytesIO()
    savemat(buf, {"synsets": synsets})
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, DEVKIT_META, buf.getvalue())
        _add(tar, DEVKIT_VAL_GT, "".join(f"{x}\n" for x in VAL_LABELS).encode())
    return path


def _val(path, n=len(VAL_LABELS)):
    with tarfile.open(path, "w") as tar:
        for k in reversed(range(1, n + 1)):  # archive order must not matter
            _add(tar, f"ILSVRC2012_val_{k:08d}.JPEG", f"val{k}".encode())
    return path


def _train(path, wnids=("n01440764", "n01443537", "n01484850")):
    with tarfile.open(path, "w") as outer:
        for wnid in wnids:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for i in range(2):
                    _add(t, f"{wnid}_{i}.JPEG", f"{wnid}{i}".encode())
            _add(outer, f"{wnid}.tar", inner.getvalue())
    return path


def _extracted(tmp_path, train=None, val=None):
    """The three archives through the extraction step: nested train tars, flat val, devkit."""
    out = tmp_path / "extracted"
    return {"train": extract_train(train or _train(tmp_path / "train.tar"), out / "train"),
            "val": extract(val or _val(tmp_path / "val.tar"), out / "val"),
            "devkit": extract(_devkit(tmp_path / "devkit.tar.gz"), out / "devkit")}


EXPECT = {"train": 6, "val": 5, "classes": 3}


def test_devkit_gives_the_class_mapping_and_val_labels(tmp_path):
    classes, labels = read_devkit(extract(_devkit(tmp_path / "devkit.tar.gz"), tmp_path / "devkit"))
    assert [(c.index, c.wnid) for c in classes] == [(0, "n01440764"), (1, "n01443537"), (2, "n01484850")]
    assert classes[1].names == "goldfish, Carassius auratus"
    assert labels == [1, 0, 2, 2, 0]


def test_prepare_reorganises_val_unpacks_nested_train_and_is_idempotent(tmp_path):
    root = prepare(_extracted(tmp_path), tmp_path / "imagenet", EXPECT)
    val = {p.relative_to(root / "val").as_posix() for p in (root / "val").rglob("*.JPEG")}
    assert val == {"n01443537/ILSVRC2012_val_00000001.JPEG", "n01440764/ILSVRC2012_val_00000002.JPEG",
                   "n01484850/ILSVRC2012_val_00000003.JPEG", "n01484850/ILSVRC2012_val_00000004.JPEG",
                   "n01440764/ILSVRC2012_val_00000005.JPEG"}
    assert (root / "val/n01443537/ILSVRC2012_val_00000001.JPEG").read_bytes() == b"val1"
    assert sorted(p.name for p in (root / "train/n01484850").iterdir()) == ["n01484850_0.JPEG", "n01484850_1.JPEG"]
    assert (root / "classes.tsv").read_text().splitlines()[1] == "0\tn01440764\ttench, Tinca tinca"
    assert read_classes(root / "classes.tsv")[2] == read_devkit(tmp_path / "extracted" / "devkit")[0][2]
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    prepare(_extracted(tmp_path), root, EXPECT)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_wrong_or_missing_archives_say_where_to_get_them(tmp_path):
    with pytest.raises(ExtractError, match="4 images but the devkit labels 5; is this ILSVRC2012_img_val.tar"):
        prepare(_extracted(tmp_path, val=_val(tmp_path / "val4.tar", 4)), tmp_path / "a", EXPECT)
    with pytest.raises(ExtractError, match="2 training classes, the published count is 3; an archive is incomplete"):
        prepare(_extracted(tmp_path / "b", train=_train(tmp_path / "train2.tar", ("n01440764", "n01443537"))),
                tmp_path / "b" / "imagenet", EXPECT)
    assert not (tmp_path / "b" / "imagenet").exists()
    with pytest.raises(ExtractError, match="unexpected member 'ILSVRC2012_val_00000005.JPEG'.*download it from"):
        extract_train(_val(tmp_path / "val.tar"), tmp_path / "c")
    with pytest.raises(ExtractError, match="not the ILSVRC2012 development kit"):
        read_devkit(extract(_val(tmp_path / "notadevkit.tar"), tmp_path / "d"))


def test_a_truncated_class_archive_inside_the_train_tar_names_both(tmp_path):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as t:
        _add(t, "n01440764_0.JPEG", bytes(8192))
    with tarfile.open(tmp_path / "train.tar", "w") as outer:
        _add(outer, "n01440764.tar", inner.getvalue()[:4096])  # cut inside the image's data
    with pytest.raises(ExtractError, match=r"train.tar:n01440764.tar: nested class archive is truncated or "
                                           r"unreadable \(.*\); delete train.tar and download it again"):
        extract_train(tmp_path / "train.tar", tmp_path / "out")
    assert not (tmp_path / "out").exists()

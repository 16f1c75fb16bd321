"""ImageNet-1k (ILSVRC2012) from the three official archives.

ILSVRC2012 needs a login at image-net.org, so config points at `ILSVRC2012_img_train.tar`,
`ILSVRC2012_img_val.tar` and `ILSVRC2012_devkit_t12.tar.gz` (local paths, or URLs with credentials from the
environment). Extraction unpacks the per-class tars nested in the train archive; preparation sorts val into
class folders by the devkit's ground truth and writes `classes.tsv` (class index, wnid, names), giving the
`train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG` layout torchvision's `ImageFolder` and timm read.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline.data.extract import (MARKER, ExtractError, check_size, check_tar, expect_count, extract_members,
                                   is_complete, link_file, link_tree, staged_dir)
from pipeline.io import atomic_write_text

DEVKIT_META = "ILSVRC2012_devkit_t12/data/meta.mat"
DEVKIT_VAL_GT = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
WHERE = "download it from https://image-net.org/download-images.php (login required) and set its path in config"
CLASS_TAR = re.compile(r"n\d{8}\.tar")


@dataclass(frozen=True)
class ImageNetClass:
    index: int  # 0-based; the ILSVRC2012_ID minus one, which is also the sorted-wnid (ImageFolder) order
    wnid: str
    names: str


def read_devkit(devkit: Path) -> tuple[list[ImageNetClass], list[int]]:
    """The 1000 leaf synsets of meta.mat and the validation labels (0-based, in file-name order), from the
    extracted development kit."""
    from scipy.io import loadmat

    try:
        meta = loadmat(Path(devkit) / DEVKIT_META, squeeze_me=True)["synsets"]
        gt = (Path(devkit) / DEVKIT_VAL_GT).read_text().split()
    except (OSError, KeyError, ValueError):
        raise ExtractError(f"{devkit}: not the ILSVRC2012 development kit (needs {DEVKIT_META} and "
                           f"{DEVKIT_VAL_GT}); {WHERE}") from None
    classes = sorted((ImageNetClass(int(s["ILSVRC2012_ID"]) - 1, str(s["WNID"]), str(s["words"]))
                      for s in meta if int(s["num_children"]) == 0), key=lambda c: c.index)
    if [c.index for c in classes] != list(range(len(classes))) or [c.wnid for c in classes] != sorted(
            c.wnid for c in classes):
        raise ExtractError(f"{devkit}: meta.mat leaf synsets are not numbered 1..N in wnid order")
    return classes, [int(x) - 1 for x in gt]


def extract_train(train_tar: Path, target: Path, stamp: str | None = None) -> Path:
    """`<wnid>/*.JPEG` from the outer archive of per-class tars; atomic, and a no-op once complete."""
    stamp = stamp or train_tar.name
    if is_complete(target, stamp):
        return target
    try:
        with staged_dir(target, stamp) as tmp, tarfile.open(train_tar) as outer:
            members = check_tar(train_tar, outer, tmp)
            check_size(train_tar, sum(m.size for m in members), tmp)
            for m in tqdm(members, desc="ImageNet train classes", unit="class", disable=None):
                _extract_class(train_tar, outer, m, tmp)
    except (tarfile.TarError, EOFError) as e:
        raise ExtractError(f"{train_tar}: unreadable archive ({e}); delete it and download it again") from None
    return target


def _extract_class(train_tar: Path, outer: tarfile.TarFile, m: tarfile.TarInfo, dest: Path) -> None:
    """One per-class tar nested in the train archive, checked like any archive and named as `outer:inner`."""
    if not (m.isfile() and CLASS_TAR.fullmatch(m.name)):
        raise ExtractError(f"{train_tar}: unexpected member {m.name!r} (expected <wnid>.tar per class); "
                           f"is this ILSVRC2012_img_train.tar? {WHERE}")
    where = Path(f"{train_tar}:{m.name}")
    out = dest / m.name.removesuffix(".tar")
    try:
        with tarfile.open(fileobj=outer.extractfile(m)) as inner:
            extract_members(where, inner, check_tar(where, inner, out.parent), out)
    except (tarfile.TarError, EOFError) as e:
        raise ExtractError(f"{where}: nested class archive is truncated or unreadable ({e}); delete "
                           f"{train_tar.name} and download it again") from None


EXTRACTORS = {"train": extract_train}


def write_classes(classes: list[ImageNetClass], path: Path) -> None:
    """`classes.tsv`: index, wnid and names per class, the index <-> wnid <-> name mapping."""
    atomic_write_text(path, "index\twnid\tnames\n" + "".join(f"{c.index}\t{c.wnid}\t{c.names}\n" for c in classes))


def read_classes(path: Path) -> list[ImageNetClass]:
    lines = Path(path).read_text().splitlines()[1:]
    return [ImageNetClass(int(i), w, n) for i, w, n in (line.split("\t") for line in lines)]


def prepare(extracted: dict[str, Path], root: Path, expect: dict, stamp: str = "prepared") -> Path:
    """`train/`, `val/` (by the devkit's ground truth, the k-th label for ILSVRC2012_val_<k>.JPEG) and
    `classes.tsv` under `root`, from the extracted archives; atomic, and a no-op once complete."""
    if is_complete(root, stamp):
        return root
    classes, labels = read_devkit(extracted["devkit"])
    wnids = {c.wnid for c in classes}
    with staged_dir(root, stamp) as tmp:
        train_classes = sorted(p.name for p in extracted["train"].iterdir() if p.is_dir())
        unknown = sorted(set(train_classes) - wnids)
        if unknown:
            raise ExtractError(f"{extracted['train']}: class folders {unknown[:3]} are not in the devkit's "
                               f"1000 classes; {WHERE}")
        expect_count(extracted["train"], "training classes", len(train_classes), expect.get("classes"))
        n_train = link_tree(extracted["train"], tmp / "train")
        expect_count(extracted["train"], "training images", n_train, expect["train"])

        val = sorted(p for p in extracted["val"].iterdir() if p.is_file() and p.name != MARKER)
        if len(val) != len(labels):
            raise ExtractError(f"{extracted['val']}: {len(val)} images but the devkit labels {len(labels)}; "
                               f"is this ILSVRC2012_img_val.tar? {WHERE}")
        expect_count(extracted["val"], "validation images", len(val), expect["val"])
        for path, label in tqdm(list(zip(val, labels)), desc="ImageNet val", unit="img", disable=None):
            out = tmp / "val" / classes[label].wnid / path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            link_file(path, out)
        write_classes(classes, tmp / "classes.tsv")
    return root

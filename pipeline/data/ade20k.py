"""ADE20K SceneParsing (ADEChallengeData2016.zip), in the layout detectron2's built-in ADE20K datasets expect.

    <root>/ADEChallengeData2016/images/{training,validation}/*.jpg
    <root>/ADEChallengeData2016/annotations/{training,validation}/*.png             labels 0..150, 0 = other
    <root>/ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png  labels 0..149, 255 = ignore

The benchmark scores 150 classes and ignores label 0 ("other objects"): the detectron2 labels are the raw
labels minus one, with 0 wrapping to 255, the ignore value (mmseg's reduce_zero_label, detectron2's
prepare_ade20k_sem_seg).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.extract import ExtractError, expect_count, is_complete, link_tree, map_files, staged_dir

SPLITS = {"train": "training", "val": "validation"}
BASE = "ADEChallengeData2016"


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    return (label.astype(np.int16) - 1).astype(np.uint8)  # 0 -> 255 (ignore), k -> k - 1


def _convert(png: Path, out_dir: Path) -> None:
    Image.fromarray(reduce_zero_label(np.asarray(Image.open(png)))).save(out_dir / png.name)


def prepare(extracted: dict[str, Path], root: Path, expect: dict, stamp: str = "prepared") -> Path:
    """The detectron2 ADE20K layout under `root` from the extracted archive; atomic, a no-op once complete."""
    if is_complete(root, stamp):
        return root
    src = extracted["trainval"] / BASE
    if not src.is_dir():
        raise ExtractError(f"{extracted['trainval']}: no {BASE}/ folder; is this ADEChallengeData2016.zip?")
    with staged_dir(root, stamp) as tmp:
        dst = tmp / BASE
        link_tree(src, dst)
        for split, folder in SPLITS.items():
            images = sorted((dst / "images" / folder).glob("*.jpg"))
            labels = sorted((dst / "annotations" / folder).glob("*.png"))
            expect_count(src / "images" / folder, "images", len(images), expect[split])
            if [p.stem for p in images] != [p.stem for p in labels]:
                missing = sorted({p.stem for p in images} ^ {p.stem for p in labels})
                raise ExtractError(f"{src / 'annotations' / folder}: images and label maps differ, e.g. "
                                   f"{missing[0]!r}; is this ADEChallengeData2016.zip?")
            out = dst / "annotations_detectron2" / folder
            out.mkdir(parents=True)
            map_files(partial(_convert, out_dir=out), labels, f"ADE20K {folder} labels")
    return root

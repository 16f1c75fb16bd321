"""The detectron2 frameworks a fine-tuning recipe names (`framework`), in one table: what each is, the dataset it
reads, the registered splits it trains and tests on, its builder in models/dense.py and its evaluator.

config/schema/recipes.schema.yaml lists the same names (tests/test_recipes.py). Light: no torch or detectron2.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    layout: str  # the prepared dataset (config/datasets.yaml `layout`)
    splits: tuple[str, str]  # registered train / val sets (pipeline/data/register.py)
    evaluator: str


KINDS = {
    "instance": Kind("coco", ("coco_2017_train", "coco_2017_val"), "pycocotools COCOeval"),
    "panoptic": Kind("coco", ("coco_2017_train_panoptic_separated", "coco_2017_val_panoptic_separated"),
                     "PQ (pipeline.panoptic_quality) + pycocotools COCOeval"),
    "semantic": Kind("ade20k", ("ade20k_sem_seg_train", "ade20k_sem_seg_val"), "detectron2 SemSegEvaluator"),
}


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    builder: str  # models.dense function; semantic segmentors take the head name
    masks: bool  # trains and tests instance masks

    @property
    def layout(self) -> str:
        return KINDS[self.kind].layout

    @property
    def splits(self) -> tuple[str, str]:
        return KINDS[self.kind].splits

    @property
    def evaluator(self) -> str:
        return KINDS[self.kind].evaluator


TASKS = {t.name: t for t in (
    Task("mask_rcnn", "instance", "mask_rcnn", True),
    Task("retinanet", "instance", "retinanet", False),
    Task("cascade_mask_rcnn", "instance", "cascade_mask_rcnn", True),
    Task("panoptic_fpn", "panoptic", "panoptic_fpn", True),
    Task("semantic_fpn", "semantic", "semantic_fpn", False),
    Task("upernet", "semantic", "semantic_segmentor", False),
    Task("segformer", "semantic", "semantic_segmentor", False),
)}
# A recipe's `dataset` -> the prepared dataset it reads (COCO panoptic lives in the COCO tree).
DATA_LAYOUT = {"coco": "coco", "coco_panoptic": "coco", "ade20k": "ade20k"}


class UnknownTask(ValueError):
    pass


def task(name: str) -> Task:
    if name not in TASKS:
        raise UnknownTask(f"unknown framework {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]

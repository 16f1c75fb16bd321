"""Shared detectron2 plumbing for fine-tuning and evaluation: dataset registration and checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pipeline.compat  # noqa: F401  (before detectron2)

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances

from pipeline.io import atomic_torch_save, atomic_write_text


def register_coco(root: str | Path, split: str, prefix: str = "coco_2017") -> str:
    """Register `<root>/annotations/instances_<split>2017.json` + `<root>/<split>2017/` as `<prefix>_<split>`."""
    root = Path(root)
    name = f"{prefix}_{split}"
    ann = root / "annotations" / f"instances_{split}2017.json"
    if not ann.is_file():
        raise FileNotFoundError(f"{ann}: COCO annotation file not found; prepare the dataset first")
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        from detectron2.data import MetadataCatalog

        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(ann), str(root / f"{split}2017"))
    return name


class AtomicCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer, but every file (and the `last_checkpoint` tag) is written atomically."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        atomic_torch_save(data, os.path.join(self.save_dir, basename))
        self.logger.info("Saved checkpoint to %s", os.path.join(self.save_dir, basename))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

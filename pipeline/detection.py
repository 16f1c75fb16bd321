"""Shared detectron2 plumbing for fine-tuning and evaluation: atomic checkpoints."""

from __future__ import annotations

import os

import pipeline.compat  # noqa: F401  (before detectron2)

from detectron2.checkpoint import DetectionCheckpointer

from pipeline.io import atomic_torch_save, atomic_write_text


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

"""Shared detectron2 plumbing for fine-tuning and evaluation: the model a settings file describes, the dataset
registration a framework reads, this process's device, atomic checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import models.compat  # noqa: F401  (before detectron2)

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from torch import nn

from models import CheckpointError, dense, load_file
from pipeline.data.register import register_ade20k, register_coco
from pipeline.engine import TrainingError
from pipeline.io import atomic_torch_save, atomic_write_text
from pipeline.settings import FinetuneSettings
from pipeline.tasks import task


class HeadsError(TrainingError):
    pass


def pretrain_img_size(checkpoint: dict | None) -> int:
    """The resolution the backbone was pretrained at (its position embeddings' grid), as the pretraining
    checkpoint (what torch.load gave) records it; 224 when it does not."""
    return checkpoint.get("img_size", 224) if isinstance(checkpoint, dict) else 224


def model_config(cfg: FinetuneSettings, pretrained: str | None = None, img_size: int | None = None):
    """The detectron2 LazyConfig of the framework `cfg.framework` around the registry backbone."""
    t = task(cfg.framework)
    kw = dict(pretrained=pretrained or None, img_size=img_size or 224)
    if cfg.drop_path:
        kw["drop_path_rate"] = cfg.drop_path
    if t.kind == "semantic":
        build = getattr(dense, t.builder)
        return build(cfg.backbone, **kw) if t.builder == "semantic_fpn" else build(cfg.backbone, t.name, **kw)
    if cfg.heads != "standard":
        if t.name not in ("mask_rcnn", "panoptic_fpn"):
            raise HeadsError(f"heads {cfg.heads}: head widths apply to mask_rcnn and panoptic_fpn, not {t.name}")
        kw["heads"] = cfg.heads
    model = getattr(dense, t.builder)(cfg.backbone, **kw)
    if t.name != "retinanet":
        model.roi_heads.batch_size_per_image = cfg.roi_batch_size_per_image
        model.proposal_generator.post_nms_topk = (cfg.rpn_post_nms_topk_train, 1000)
    return model


def build_model(cfg: FinetuneSettings, pretrained: str | None = None, img_size: int | None = None) -> nn.Module:
    return instantiate(model_config(cfg, pretrained, img_size))


def register(framework: str, root: str) -> tuple[str, str]:
    """Register the prepared dataset `root` for a framework; its (train, val) set names."""
    t = task(framework)
    (register_ade20k if t.layout == "ade20k" else register_coco)(root)
    return t.splits


def device() -> torch.device:
    """This process's GPU (detectron2's launch sets it), or the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


class AtomicCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer, but every file (and the `last_checkpoint` tag) is written atomically, and the
    only files it reads back are this run's own `.pth` states in its folder, weights-only: detectron2 would
    unpickle a `.pkl` that `last_checkpoint` names."""

    def _load_file(self, filename: str) -> dict:
        path = Path(filename)
        if path.suffix != ".pth" or path.resolve().parent != Path(self.save_dir).resolve():
            raise CheckpointError(f"{Path(self.save_dir) / 'last_checkpoint'} names {filename}, not a .pth state of "
                                  "this run's folder; delete it (or the folder) to start the run afresh")
        try:
            loaded = load_file(path)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; it is this run's resume state: delete it and "
                                  f"{Path(self.save_dir) / 'last_checkpoint'} to start the run afresh") from None
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{path}: holds no state dict; delete it and "
                                  f"{Path(self.save_dir) / 'last_checkpoint'} to start the run afresh")
        return loaded if "model" in loaded else {"model": loaded}

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

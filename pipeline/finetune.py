"""Fine-tune a detectron2 Mask R-CNN whose backbone is a registered model, resumable.

    python -m pipeline.finetune --backbone pvt_tiny --pretrained results/pretrain/.../model.pth \
        --coco data/embedded/coco --work-dir .../state --output .../model_final.pth --iters 20

The work dir holds detectron2's periodic checkpoints (written atomically); a re-run continues from the
last one. The declared output is the final model's weights only.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pipeline.compat  # noqa: F401  (before detectron2)

import torch
from detectron2.config import instantiate
from detectron2.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import SimpleTrainer, hooks
from detectron2.solver import LRMultiplier, WarmupParamScheduler, get_default_optimizer_params
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import JSONWriter
from fvcore.common.param_scheduler import MultiStepParamScheduler
from tqdm import tqdm

from models import CheckpointError
from models.dense import mask_rcnn
from pipeline.data.register import register_coco
from pipeline.detection import AtomicCheckpointer
from pipeline.io import atomic_torch_save, claim_work_dir, weights_digest
from pipeline.cli import parse_settings
from pipeline.logs import setup_logging


@dataclass
class FinetuneConfig:
    backbone: str
    pretrained: str
    coco: str
    work_dir: str
    output: str
    iters: int = 20
    batch_size: int = 2
    lr: float = 2e-4
    weight_decay: float = 1e-4
    warmup_iters: int = 5
    min_size: int = 320
    max_size: int = 512
    checkpoint_every: int = 10
    # detectron2's Mask R-CNN FPN defaults (512 RoIs per image, 1000 proposals); CPU smoke runs lower them.
    roi_batch_size_per_image: int = 512
    rpn_post_nms_topk_train: int = 1000
    seed: int = 0
    log: str | None = None
    # The resolution the backbone was pretrained at (its position embeddings' grid); read from the
    # pretrained checkpoint when it records one.
    pretrain_img_size: int = 224


def build_model(cfg: FinetuneConfig):
    model_cfg = mask_rcnn(cfg.backbone, pretrained=cfg.pretrained, img_size=cfg.pretrain_img_size)
    model_cfg.roi_heads.batch_size_per_image = cfg.roi_batch_size_per_image
    model_cfg.proposal_generator.post_nms_topk = (cfg.rpn_post_nms_topk_train, 1000)
    return instantiate(model_cfg)


class ProgressBar(hooks.HookBase):
    def __init__(self, max_iter: int, desc: str):
        self.max_iter, self.desc, self.bar = max_iter, desc, None

    def before_train(self):
        self.bar = tqdm(total=self.max_iter, initial=self.trainer.start_iter, desc=self.desc, unit="it",
                        dynamic_ncols=True)

    def after_step(self):
        losses = self.trainer.storage.latest()
        total = losses.get("total_loss")
        if total is not None and not math.isfinite(total[0]):
            raise FloatingPointError(f"total loss is {total[0]} at iteration {self.trainer.iter}; "
                                     "lower the lr or check the annotations")
        self.bar.update(1)
        if total is not None:
            self.bar.set_postfix(loss=f"{total[0]:.3f}")

    def after_train(self):
        if self.bar is not None:
            self.bar.close()


def build_train_loader(dataset: str, cfg: FinetuneConfig):
    mapper = DatasetMapper(is_train=True, image_format="RGB", use_instance_mask=True, augmentations=[
        T.ResizeShortestEdge(cfg.min_size, cfg.max_size, sample_style="choice"), T.RandomFlip()])
    dicts = get_detection_dataset_dicts([dataset])
    return build_detection_train_loader(dataset=dicts, mapper=mapper, total_batch_size=cfg.batch_size,
                                        sampler=TrainingSampler(len(dicts), seed=cfg.seed), num_workers=0)


def finetune(cfg: FinetuneConfig) -> None:
    log = setup_logging(cfg.log, "finetune")
    seed_all_rng(cfg.seed)
    if cfg.pretrained:
        meta = torch.load(cfg.pretrained, map_location="cpu", weights_only=True)
        cfg.pretrain_img_size = meta.get("img_size", cfg.pretrain_img_size) if isinstance(meta, dict) else 224
    fingerprint = {k: v for k, v in asdict(cfg).items() if k not in ("work_dir", "output", "log", "pretrained")}
    fingerprint["pretrained_weights_sha256"] = weights_digest(cfg.pretrained) if cfg.pretrained else None
    claim_work_dir(cfg.work_dir, fingerprint, log)
    register_coco(cfg.coco)
    train_set = "coco_2017_train"
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.AdamW(get_default_optimizer_params(model, weight_decay=cfg.weight_decay,
                                                               weight_decay_norm=0.0), lr=cfg.lr)
    # The 1x schedule's shape (x0.1 at 8/12 and 11/12 of training), scaled to `iters`.
    milestones = sorted({m for m in (cfg.iters * 8 // 12, cfg.iters * 11 // 12) if 0 < m < cfg.iters})
    steps = MultiStepParamScheduler([1.0, 0.1, 0.01][: len(milestones) + 1], num_updates=cfg.iters,
                                    milestones=milestones)
    warmup = WarmupParamScheduler(steps, 0.001, min(cfg.warmup_iters, cfg.iters) / cfg.iters)
    scheduler = LRMultiplier(optimizer, warmup, max_iter=cfg.iters)
    trainer = SimpleTrainer(model, build_train_loader(train_set, cfg), optimizer)
    checkpointer = AtomicCheckpointer(model, cfg.work_dir, trainer=trainer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=scheduler),
        hooks.PeriodicCheckpointer(checkpointer, cfg.checkpoint_every, max_iter=cfg.iters, max_to_keep=2),
        hooks.PeriodicWriter([JSONWriter(f"{cfg.work_dir}/metrics.json")], period=1),
        ProgressBar(cfg.iters, f"finetune {cfg.backbone} mask_rcnn"),
    ])
    start_iter = 0
    if checkpointer.has_checkpoint():
        checkpointer.resume_or_load(None, resume=True)
        start_iter = trainer.iter + 1
        log.info("resuming from %s at iteration %d of %d", checkpointer.get_checkpoint_file(), start_iter,
                 cfg.iters)
    else:
        log.info("starting Mask R-CNN %s from %s: %d iterations, batch %d", cfg.backbone, cfg.pretrained,
                 cfg.iters, cfg.batch_size)
    t0 = time.perf_counter()
    if start_iter < cfg.iters:
        trainer.train(start_iter, cfg.iters)
    atomic_torch_save({"model": model.state_dict(), "backbone": cfg.backbone, "iters": cfg.iters,
                       "config": asdict(cfg)}, cfg.output)
    log.info("done in %.0f s -> %s", time.perf_counter() - t0, cfg.output)


def main(argv=None) -> int:
    cfg = parse_settings(FinetuneConfig, argv, "fine-tune Mask R-CNN with a registered backbone")
    try:
        finetune(cfg)
    except (FileNotFoundError, FloatingPointError, CheckpointError) as e:
        setup_logging(cfg.log, "finetune").error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fine-tune a detectron2 model whose backbone is a registered model, resumable.

    python -m pipeline.finetune --task semantic_fpn --backbone pvt_tiny --pretrained .../model.pth \
        --data data/ade20k --work-dir .../state --output .../model_final.pth --iters 80000

Tasks (frameworks): mask_rcnn, retinanet, cascade_mask_rcnn (COCO instances), panoptic_fpn (COCO panoptic),
semantic_fpn, upernet, segformer (ADE20K). The length is `--iters`, or `--epochs` over the training set with
lr steps at `--steps` (epochs); `--poly-power` gives a polynomial decay instead. The work dir holds detectron2's
periodic checkpoints (written atomically); a re-run continues from the last one. The declared output is the
final model's weights and the settings that built it.

`--gpus G` runs G processes (one per GPU; gloo on a machine without GPUs) through detectron2's launch;
`--batch-size` is the total over them. Over several nodes each node runs this command once, with NNODES,
NODE_RANK, MASTER_ADDR and MASTER_PORT set (pipeline/launch.py does so from the SLURM job). On SLURM's USR2
(pipeline/preempt.py) the run saves its state after the current iteration and exits with REQUEUE_EXIT; run
again, it resumes at the next iteration.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pipeline.compat  # noqa: F401  (before detectron2)

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import SimpleTrainer, hooks
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import JSONWriter
from fvcore.common.param_scheduler import MultiStepParamScheduler, PolynomialDecayParamScheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models import CheckpointError
from models import dense
from pipeline.cli import parse_settings
from pipeline.compat import distributed_launch
from pipeline.data.register import register_ade20k, register_coco
from pipeline.detection import AtomicCheckpointer
from pipeline.io import atomic_torch_save, claim_work_dir, weights_digest
from pipeline.logs import setup_logging
from pipeline.preempt import REQUEUE_EXIT, Requeue, StopSignal
from pipeline.recipes import INSTANCE_TASKS, SEMANTIC_TASKS, TASKS

# The registered training/validation sets each kind of task reads (pipeline/data/register.py).
SPLITS = {"instance": ("coco_2017_train", "coco_2017_val"),
          "panoptic": ("coco_2017_train_panoptic_separated", "coco_2017_val_panoptic_separated"),
          "semantic": ("ade20k_sem_seg_train", "ade20k_sem_seg_val")}


class FinetuneError(Exception):
    pass


@dataclass
class FinetuneConfig:
    backbone: str
    pretrained: str
    data: str
    work_dir: str
    output: str
    task: str = "mask_rcnn"
    iters: int = 0  # 0: from `epochs`
    epochs: int = 0
    steps: str = ""  # lr x0.1 at these epochs (comma-separated); empty with --poly-power
    poly_power: float = 0.0
    batch_size: int = 2
    optimizer: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 1e-4
    head_lr_mult: float = 1.0
    # lr decay towards the input (see lr_layer); layer_decay_layers 0: one per backbone stage.
    layer_decay: float = 1.0
    layer_decay_type: str = "stage_wise"
    layer_decay_layers: int = 0
    clip_grad: float = 0.0
    drop_path_rate: float = 0.0
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    # Resizing: short sides (comma-separated, `sample` choice|range) capped at max_size; or, with `size`,
    # scale jitter in [jitter_min, jitter_max] of a size x size canvas and a size x size crop; semantic tasks
    # crop `crop` x `crop` after resizing.
    short_side: str = "800"
    sample: str = "choice"
    max_size: int = 1333
    size: int = 0
    jitter_min: float = 1.0
    jitter_max: float = 1.0
    crop: int = 512
    # The optional DETR-style crop branch: resize to one of these short sides, crop to a size in this range.
    crop_branch_sides: str = ""
    crop_branch_size: str = "384,600"
    checkpoint_every: int = 5000
    # detectron2's Mask R-CNN FPN defaults (512 RoIs per image, 1000 proposals); CPU smoke runs lower them.
    roi_batch_size_per_image: int = 512
    heads: str = "standard"  # head widths, models/dense.py HEAD_WIDTHS
    rpn_post_nms_topk_train: int = 1000
    seed: int = 0
    workers: int = 0
    gpus: int = 1  # processes on this node, one per GPU
    log_file: str | None = None
    # The resolution the backbone was pretrained at (its position embeddings' grid); read from the
    # pretrained checkpoint when it records one.
    pretrain_img_size: int = 224


def kind(task: str) -> str:
    if task not in TASKS:
        raise FinetuneError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return "instance" if task in INSTANCE_TASKS else "panoptic" if task == "panoptic_fpn" else "semantic"


def model_config(cfg: FinetuneConfig):
    kw = dict(pretrained=cfg.pretrained, img_size=cfg.pretrain_img_size)
    if cfg.drop_path_rate:
        kw["drop_path_rate"] = cfg.drop_path_rate
    if cfg.task in SEMANTIC_TASKS:
        if cfg.task == "semantic_fpn":
            return dense.semantic_fpn(cfg.backbone, **kw)
        return dense.semantic_segmentor(cfg.backbone, cfg.task, **kw)
    if cfg.heads != "standard":
        if cfg.task not in ("mask_rcnn", "panoptic_fpn"):
            raise FinetuneError(f"--heads {cfg.heads}: head widths apply to mask_rcnn and panoptic_fpn, not {cfg.task}")
        kw["heads"] = cfg.heads
    model = getattr(dense, cfg.task)(cfg.backbone, **kw)
    if cfg.task != "retinanet":
        model.roi_heads.batch_size_per_image = cfg.roi_batch_size_per_image
        model.proposal_generator.post_nms_topk = (cfg.rpn_post_nms_topk_train, 1000)
    return model


def build_model(cfg: FinetuneConfig) -> nn.Module:
    return instantiate(model_config(cfg))


class OneOf(T.Augmentation):
    """One of several augmentation lists, chosen uniformly per image (mmdet's AutoAugment policies)."""

    def __init__(self, choices: list[list[T.Augmentation]]):
        super().__init__()
        self.choices = [T.AugmentationList(c) for c in choices]

    def __call__(self, aug_input) -> T.Transform:
        return self.choices[np.random.randint(len(self.choices))](aug_input)


def train_augmentations(cfg: FinetuneConfig) -> list:
    flip = T.RandomFlip()
    if cfg.size:
        return [T.ResizeScale(cfg.jitter_min, cfg.jitter_max, cfg.size, cfg.size),
                T.FixedSizeCrop((cfg.size, cfg.size)), flip]
    sides = [int(s) for s in cfg.short_side.split(",")]
    resize = T.ResizeShortestEdge(sides, cfg.max_size, sample_style=cfg.sample)
    if kind(cfg.task) == "semantic":
        # mmseg's ADE20K pipeline: random rescale, a crop in which no class covers more than 75 %, flip.
        return [resize, T.RandomCrop_CategoryAreaConstraint("absolute", (cfg.crop, cfg.crop), 0.75, 255), flip]
    if cfg.crop_branch_sides:
        # DETR-style: half the images are resized to a short side in crop_branch_sides, cropped to a random
        # size in crop_branch_size (absolute_range), then resized as the others.
        lo, hi = (int(v) for v in cfg.crop_branch_size.split(","))
        first = [int(s) for s in cfg.crop_branch_sides.split(",")]
        branch = [T.ResizeShortestEdge(first, cfg.max_size, sample_style="choice"),
                  T.RandomCrop("absolute_range", (lo, hi)), resize]
        return [OneOf([[resize], branch]), flip]
    return [resize, flip]


def build_train_loader(cfg: FinetuneConfig, dataset: str, dicts: list):
    mapper = DatasetMapper(is_train=True, image_format="RGB", use_instance_mask=cfg.task != "retinanet",
                           augmentations=train_augmentations(cfg))
    return build_detection_train_loader(dataset=dicts, mapper=mapper, total_batch_size=cfg.batch_size,
                                        sampler=TrainingSampler(len(dicts), seed=cfg.seed),
                                        num_workers=cfg.workers)


def lr_layer(rel: str | None, stages: list[str], decay_type: str, num_layers: int) -> int:
    """A parameter's layer id for lr decay, as the mmdet/mmseg `LearningRateDecayOptimizerConstructor` that
    HorNet's dense configs use (ConvNeXt's detection code) assigns it; `rel` is its name inside the backbone
    network, None outside it. The lr scale is decay^(num_layers + 1 - id): 1 for the neck and heads.

    stage_wise: stem and downsampling layers 0, stage i at i + 1. layer_wise (12 layers in ConvNeXt-style
    networks): the stem 0, stage 0 at 1, stage 1 and its downsampling at 2, stage 2 in blocks of three from 3,
    stage 3 and its downsampling at num_layers. Output norms (`norm0`...) count as head, as there.
    Departure: other parameters outside the stages (PVT's or LVT's patch embeddings) count as stem.
    """
    if rel is None:
        return num_layers + 1
    parts = rel.split(".")
    if parts[0] in ("cls_token", "pos_embed", "mask_token"):
        return 0
    if parts[0] == "downsample_layers":
        return 0 if decay_type == "stage_wise" else (0, 2, 3, num_layers)[int(parts[1])]
    for i, module in enumerate(stages):
        if rel.startswith(module + "."):
            if decay_type == "stage_wise":
                return i + 1
            block = int(rel[len(module) + 1:].split(".")[0])
            return (1, 2, 3 + block // 3, num_layers)[i]
    if parts[0][:4] == "norm" and parts[0][4:].isdigit():
        return num_layers + 1
    return 0


def _backbone_name(name: str) -> str | None:
    for prefix in ("backbone.bottom_up.net.", "backbone.net."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return None


def param_groups(model: nn.Module, cfg: FinetuneConfig) -> list[dict]:
    """No weight decay on 1-d parameters (norms, layer scales), biases, position embeddings and class tokens;
    `head_lr_mult` on the decode head; `layer_decay` scales the backbone's lr per `lr_layer`."""
    bottom = getattr(model.backbone, "bottom_up", model.backbone)
    stages = [f["module"] for f in bottom.net.feature_info]
    if cfg.layer_decay_type not in ("stage_wise", "layer_wise"):
        raise FinetuneError(f"--layer-decay-type {cfg.layer_decay_type!r}: valid types are stage_wise, layer_wise")
    if cfg.layer_decay_type == "layer_wise" and len(stages) != 4:
        raise FinetuneError(f"--layer-decay-type layer_wise needs a 4-stage backbone; this one has {len(stages)}")
    num_layers = cfg.layer_decay_layers or len(stages)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = lr_layer(_backbone_name(name), stages, cfg.layer_decay_type, num_layers)
        scale = cfg.layer_decay ** (num_layers + 1 - layer)
        if name.startswith("sem_seg_head."):
            scale *= cfg.head_lr_mult
        no_decay = p.ndim <= 1 or name.endswith((".bias", "pos_embed", "cls_token"))
        wd = 0.0 if no_decay else cfg.weight_decay
        group = groups.setdefault((scale, wd), {"params": [], "lr": cfg.lr * scale, "weight_decay": wd})
        group["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    raise FinetuneError(f"unknown optimizer {cfg.optimizer!r}; valid: adamw, sgd")


def schedule_length(cfg: FinetuneConfig, images: int) -> tuple[int, list[int]]:
    """Iterations and lr-step iterations: `iters` directly, or `epochs` passes over `images`."""
    per_epoch = max(1, math.ceil(images / cfg.batch_size))
    epochs = [int(s) for s in cfg.steps.split(",") if s]
    iters = cfg.iters or cfg.epochs * per_epoch
    if iters <= 0:
        raise FinetuneError("no training length: give --iters or --epochs")
    total_epochs = cfg.epochs or max(epochs + [1])
    # With `iters` given (smoke scale), the steps keep their place as a fraction of the schedule.
    milestones = sorted({round(iters * e / total_epochs) for e in epochs} - {0, iters})
    return iters, [m for m in milestones if 0 < m < iters]


def build_scheduler(optimizer, cfg: FinetuneConfig, iters: int, milestones: list[int]):
    if cfg.poly_power:
        shape = PolynomialDecayParamScheduler(1.0, cfg.poly_power)
    else:
        shape = MultiStepParamScheduler([0.1 ** i for i in range(len(milestones) + 1)], num_updates=iters,
                                        milestones=milestones)
    warmup = WarmupParamScheduler(shape, cfg.warmup_ratio, min(cfg.warmup_iters, iters) / iters)
    return LRMultiplier(optimizer, warmup, max_iter=iters)


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


class StopOnSignal(hooks.HookBase):
    """After the step during which any process got the stop signal: save the full state (model, optimizer,
    scheduler, iteration), then leave with Requeue; a re-run resumes at the next iteration."""

    def __init__(self, stop: StopSignal, checkpointer, max_iter: int, log):
        self.stop, self.checkpointer, self.max_iter, self.log = stop, checkpointer, max_iter, log

    def after_step(self):
        if not self.stop.requested(comm.get_world_size()):
            return
        it = self.trainer.iter
        self.checkpointer.save(f"model_{it:07d}", iteration=it)
        comm.synchronize()  # every process leaves after the save, so none is stopped while writing
        self.log.info("stop signal: state saved after iteration %d of %d in %s; run again to resume", it + 1,
                      self.max_iter, self.checkpointer.get_checkpoint_file())
        raise Requeue


class ClippedTrainer(SimpleTrainer):
    """SimpleTrainer with gradient-norm clipping (`clip` > 0) between backward and the optimizer step."""

    def __init__(self, model, data_loader, optimizer, clip: float):
        super().__init__(model, data_loader, optimizer)
        self.clip = clip

    def run_step(self):
        if not self.clip:
            return super().run_step()
        data = next(self._data_loader_iter)
        loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.clip)
        self._write_metrics(loss_dict, 0.0)
        self.optimizer.step()


def register(task: str, root: str) -> tuple[str, str]:
    (register_ade20k if kind(task) == "semantic" else register_coco)(root)
    return SPLITS[kind(task)]


def device() -> torch.device:
    """This process's GPU (detectron2's launch sets it), or the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def finetune(cfg: FinetuneConfig) -> None:
    """One process's part of the run (all of it with one process)."""
    stop = StopSignal()
    rank, world = comm.get_rank(), comm.get_world_size()
    log = setup_logging(cfg.log_file if rank == 0 else None, "finetune")
    if rank:
        log.setLevel("WARNING")
    kind(cfg.task)
    if cfg.batch_size % world:
        raise FinetuneError(f"--batch-size {cfg.batch_size} is the total over {world} processes; it must divide "
                            "among them")
    if world > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))  # cores shared on a node
    seed_all_rng(cfg.seed + rank)
    if cfg.pretrained:
        meta = torch.load(cfg.pretrained, map_location="cpu", weights_only=True)
        cfg.pretrain_img_size = meta.get("img_size", cfg.pretrain_img_size) if isinstance(meta, dict) else 224
    fingerprint = {k: v for k, v in asdict(cfg).items()
                   if k not in ("work_dir", "output", "log_file", "pretrained", "workers", "gpus", "checkpoint_every")}
    fingerprint["pretrained_weights_sha256"] = weights_digest(cfg.pretrained) if cfg.pretrained else None
    if rank == 0:
        claim_work_dir(cfg.work_dir, fingerprint, log)
    comm.synchronize()
    train_set, _ = register(cfg.task, cfg.data)
    dicts = get_detection_dataset_dicts([train_set])
    iters, milestones = schedule_length(cfg, len(dicts))
    dev = device()
    model = build_model(cfg).to(dev)
    model.train()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, iters, milestones)
    net = model if world == 1 else DistributedDataParallel(
        model, device_ids=[dev.index] if dev.type == "cuda" else None,
        forward_sync_buffers=False)  # detectron2's DDP set-up: no buffer sync in each forward
    trainer = ClippedTrainer(net, build_train_loader(cfg, train_set, dicts), optimizer, cfg.clip_grad)
    checkpointer = AtomicCheckpointer(model, cfg.work_dir, trainer=trainer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=scheduler),
        hooks.PeriodicCheckpointer(checkpointer, cfg.checkpoint_every, max_iter=iters, max_to_keep=1),
        StopOnSignal(stop, checkpointer, iters, log),
        *([hooks.PeriodicWriter([JSONWriter(f"{cfg.work_dir}/metrics.json")], period=1),
           ProgressBar(iters, f"finetune {cfg.backbone} {cfg.task}")] if rank == 0 else []),
    ])
    start_iter = 0
    if checkpointer.has_checkpoint():
        checkpointer.resume_or_load(None, resume=True)
        start_iter = trainer.iter + 1
        log.info("resuming from %s after iteration %d of %d", checkpointer.get_checkpoint_file(), start_iter, iters)
    else:
        log.info("starting %s %s from %s: %d iterations (lr steps at %s), batch %d over %d process(es) on %s, "
                 "%d training images", cfg.task, cfg.backbone, cfg.pretrained, iters, milestones or "none",
                 cfg.batch_size, world, dev.type, len(dicts))
    t0 = time.perf_counter()
    if start_iter < iters:
        trainer.train(start_iter, iters)
    if rank == 0:
        config = {**asdict(cfg), "world_size": world}
        atomic_torch_save({"model": model.state_dict(), "backbone": cfg.backbone, "task": cfg.task, "iters": iters,
                           "config": config}, cfg.output)
        log.info("done in %.0f s -> %s", time.perf_counter() - t0, cfg.output)
    comm.synchronize()


def run(cfg: FinetuneConfig) -> int:
    """One process: 0 when done, 1 on bad input or settings (one log line), REQUEUE_EXIT when stopped by a
    signal with its state saved. A process that detectron2's launch started exits with that status."""
    code = 0
    try:
        finetune(cfg)
    except (FileNotFoundError, FloatingPointError, CheckpointError, FinetuneError) as e:
        setup_logging(cfg.log_file, "finetune").error("%s", e)
        code = 1
    except Requeue:
        code = REQUEUE_EXIT
    if comm.get_world_size() > 1 and code:
        sys.exit(code)
    return code


def machines() -> tuple[int, int, str]:
    """(nodes, this node's rank, rendezvous URL) from the job's environment; one node without it."""
    nodes = int(os.environ.get("NNODES", "1"))
    if nodes == 1:
        return 1, 0, "auto"
    try:
        return nodes, int(os.environ["NODE_RANK"]), f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    except KeyError as e:
        raise FinetuneError(f"NNODES={nodes} but {e.args[0]} is not set; run multi-node jobs through "
                            "pipeline/launch.py") from None


def main(argv=None) -> int:
    cfg = parse_settings(FinetuneConfig, argv, "fine-tune a detectron2 model with a registered backbone")
    try:
        nodes, node_rank, url = machines()
    except FinetuneError as e:
        setup_logging(cfg.log_file, "finetune").error("%s", e)
        return 1
    if nodes * cfg.gpus <= 1:
        return run(cfg)
    # The stop signal is for the training processes (each installs its handler); this one only waits for them.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        distributed_launch()(run, cfg.gpus, nodes, node_rank, url, args=(cfg,))
    except torch.multiprocessing.ProcessExitedException as e:
        return e.exit_code if e.exit_code in (1, REQUEUE_EXIT) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

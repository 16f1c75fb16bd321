"""Fine-tune a detectron2 model whose backbone is a registered model, resumable.

    python -m pipeline.finetune --settings .../settings.yaml --pretrained .../model.pth --work-dir .../state \
        --output .../model_final.pth

Every value comes from the job's settings file (pipeline/settings.py FinetuneSettings: the recipe's keys);
the frameworks are pipeline/tasks.py's. The length is `iters`, or `epochs` over the training set with lr
steps at `steps` (epochs); `poly_power` gives a polynomial decay instead. The work dir holds detectron2's
periodic checkpoints (written atomically, one at a time: the final state replaces the last periodic one); a
re-run continues from it. The declared output is the final model's weights and the settings that built it.

`--gpus G` runs G processes (one per GPU; gloo on a machine without GPUs) through detectron2's launch;
`batch_size` is the total over them. Over several nodes each node runs this command once, with NNODES,
NODE_RANK, MASTER_ADDR and MASTER_PORT set (pipeline/launch.py does so from the SLURM job). On SLURM's USR2
(pipeline/preempt.py) the run saves its state after the current iteration and exits with REQUEUE_EXIT; run
again, it resumes at the next iteration.
"""

from __future__ import annotations

import gc
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import models.compat  # noqa: F401  (before detectron2)

import numpy as np
import torch
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

from models import CheckpointError, load_file
from pipeline import engine
from models.compat import distributed_launch
from pipeline.detection import AtomicCheckpointer, build_model, device, pretrain_img_size, register
from pipeline.engine import TrainingError
from pipeline.io import DiskFull, atomic_torch_save, weights_digest
from pipeline.logs import setup_logging
from pipeline.preempt import REQUEUE_EXIT, Requeue, StopSignal
from pipeline.settings import FinetuneSettings
from pipeline.tasks import UnknownTask, task


class FinetuneError(TrainingError):
    pass


@dataclass
class RunFiles:
    """A fine-tuning run's files and processes (the command line); its values are FinetuneSettings."""

    pretrained: str | None
    data: str
    work_dir: str
    output: str
    gpus: int = 1  # processes on this node, one per GPU
    log_file: str | None = None


class OneOf(T.Augmentation):
    """One of several augmentation lists, chosen uniformly per image (mmdet's AutoAugment policies)."""

    def __init__(self, choices: list[list[T.Augmentation]]):
        super().__init__()
        self.choices = [T.AugmentationList(c) for c in choices]

    def __call__(self, aug_input) -> T.Transform:
        return self.choices[np.random.randint(len(self.choices))](aug_input)


def _resize(cfg: FinetuneSettings) -> T.Augmentation:
    """The training resize: a short side from `short_side`, or mmseg's random rescale of `scale` by
    `ratio_range` (the short side from scale[1] x ratio, the long side capped at scale[0] x the largest ratio)."""
    if cfg.scale:
        lo, hi = cfg.ratio_range or (1.0, 1.0)
        sides, sample, max_size = [int(cfg.scale[1] * lo), int(cfg.scale[1] * hi)], "range", int(cfg.scale[0] * hi)
    else:
        sides, sample, max_size = list(cfg.short_side), cfg.sample, cfg.max_size
    return T.ResizeShortestEdge(sides, max_size, sample_style=sample)


def train_augmentations(cfg: FinetuneSettings) -> list:
    flip = T.RandomFlip()
    if cfg.size:
        return [T.ResizeScale(cfg.jitter[0], cfg.jitter[1], cfg.size, cfg.size),
                T.FixedSizeCrop((cfg.size, cfg.size)), flip]
    resize = _resize(cfg)
    if task(cfg.framework).kind == "semantic":
        # mmseg's ADE20K pipeline: random rescale, a crop in which no class covers more than 75 %, flip.
        return [resize, T.RandomCrop_CategoryAreaConstraint("absolute", (cfg.crop, cfg.crop), 0.75, 255), flip]
    if cfg.crop_branch:
        # DETR-style: half the images are resized to one of the branch's short sides, cropped to a random size in
        # its crop range (absolute_range), then resized as the others.
        lo, hi = cfg.crop_branch["crop"]
        branch = [T.ResizeShortestEdge(list(cfg.crop_branch["short_side"]), cfg.max_size, sample_style="choice"),
                  T.RandomCrop("absolute_range", (lo, hi)), resize]
        return [OneOf([[resize], branch]), flip]
    return [resize, flip]


def build_train_loader(cfg: FinetuneSettings, dicts: list):
    mapper = DatasetMapper(is_train=True, image_format="RGB", use_instance_mask=task(cfg.framework).masks,
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


def param_groups(model: nn.Module, cfg: FinetuneSettings) -> list[dict]:
    """No weight decay on 1-d parameters (norms, layer scales), biases, position embeddings and class tokens;
    `head_lr_mult` on the decode head; `layer_decay` scales the backbone's lr per `lr_layer`."""
    bottom = getattr(model.backbone, "bottom_up", model.backbone)
    stages = [f["module"] for f in bottom.net.feature_info]
    if cfg.layer_decay_type not in ("stage_wise", "layer_wise"):
        raise FinetuneError(f"layer_decay_type {cfg.layer_decay_type!r}: valid types are stage_wise, layer_wise")
    if cfg.layer_decay_type == "layer_wise" and len(stages) != 4:
        raise FinetuneError(f"layer_decay_type layer_wise needs a 4-stage backbone; this one has {len(stages)}")
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


def schedule_length(cfg: FinetuneSettings, images: int) -> tuple[int, list[int]]:
    """Iterations and lr-step iterations: `iters` directly, or `epochs` passes over `images`."""
    per_epoch = max(1, math.ceil(images / cfg.batch_size))
    epochs = list(cfg.steps or [])
    iters = cfg.iters or cfg.epochs * per_epoch
    if iters <= 0:
        raise FinetuneError("no training length: the settings give neither iters nor epochs")
    total_epochs = cfg.epochs or max(epochs + [1])
    # With `iters` given (smoke scale), the steps keep their place as a fraction of the schedule.
    milestones = sorted({round(iters * e / total_epochs) for e in epochs} - {0, iters})
    return iters, [m for m in milestones if 0 < m < iters]


def build_scheduler(optimizer, cfg: FinetuneSettings, iters: int, milestones: list[int]):
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
        total = self.trainer.storage.latest().get("total_loss")
        self.bar.update(1)
        if total is not None:
            self.bar.set_postfix(loss=f"{total[0]:.3f}")

    def after_train(self):
        if self.bar is not None:
            self.bar.close()


class StateCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's periodic checkpointer (keeping the last periodic state), except that the final state replaces
    that one instead of being written beside a copy of it: a state holds the optimizer's moments too (0.5-0.8 GB
    for a ResNet-50-sized Mask R-CNN or UperNet), and a finished run needs only the one a re-run exports from."""

    def step(self, iteration: int, **kwargs) -> None:
        if iteration < self.max_iter - 1:
            super().step(iteration, **kwargs)
            return
        self.checkpointer.save("model_final", iteration=int(iteration), **kwargs)
        if self.checkpointer.save_to_disk:
            for path in self.recent_checkpoints:
                Path(path).unlink(missing_ok=True)
        self.recent_checkpoints = []


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
    """SimpleTrainer with gradient-norm clipping (`clip` > 0) between backward and the optimizer step, stopping on a
    non-finite loss in one line (engine.check_finite: the iteration and the lr) before detectron2's own check
    raises its multi-line FloatingPointError."""

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

    def _write_metrics(self, loss_dict, data_time: float, prefix: str = "") -> None:
        total = torch.stack([v.detach().float() for v in loss_dict.values()]).sum().item()
        engine.check_finite(total, f"iteration {self.iter}", self.optimizer.param_groups[0]["lr"])
        super()._write_metrics(loss_dict, data_time, prefix)


def _start(cfg: FinetuneSettings, files: RunFiles, rank: int, world: int, log) -> int:
    """Checks, threads, seed, and the work dir claimed for exactly this run (settings and input weights); the
    resolution the backbone was pretrained at."""
    if cfg.batch_size % world:
        raise FinetuneError(f"batch_size {cfg.batch_size} is the total over {world} processes; it must divide "
                            "among them")
    if world > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))  # cores shared on a node
    seed_all_rng(cfg.seed + rank)
    # The pretrained file is read here once for its weights' digest and resolution, then by the backbone.
    pretrained = load_file(files.pretrained) if files.pretrained else None
    run = engine.fingerprint(cfg, Path(files.data))
    run["pretrained_weights_sha256"] = weights_digest(pretrained) if pretrained is not None else None
    engine.claim(Path(files.work_dir), run, log, rank, comm.synchronize)
    return pretrain_img_size(pretrained)


def _trainer(cfg: FinetuneSettings, model: nn.Module, dicts: list, iters: int, milestones: list[int]):
    """The trainer (DDP-wrapped where a process group exists, even of one process) and the lr scheduler."""
    optimizer = engine.optimizer(param_groups(model, cfg), cfg.optimizer, cfg.lr, nesterov=False)
    scheduler = build_scheduler(optimizer, cfg, iters, milestones)
    dev = next(model.parameters()).device
    net = model if not torch.distributed.is_initialized() else DistributedDataParallel(
        model, device_ids=[dev.index] if dev.type == "cuda" else None,
        forward_sync_buffers=False)  # detectron2's DDP set-up: no buffer sync in each forward
    return ClippedTrainer(net, build_train_loader(cfg, dicts), optimizer, cfg.clip_grad), scheduler


def _keep_resumed(checkpointer: AtomicCheckpointer, periodic, log) -> None:
    """The periodic states earlier processes left (and one saved on a stop signal) give way to the one resumed
    from, which the periodic checkpointer then replaces: a killed and resumed run keeps as many as an
    uninterrupted one."""
    resumed = Path(checkpointer.get_checkpoint_file())
    for path in sorted(resumed.parent.glob("model_[0-9]*.pth")):
        if path.name != resumed.name:
            path.unlink()
            log.info("removed %s, an earlier state of this run", path.name)
    periodic.recent_checkpoints = [] if resumed.name == "model_final.pth" else [str(resumed)]


def finetune(cfg: FinetuneSettings, files: RunFiles) -> None:
    """One process's part of the run (all of it with one process)."""
    stop = StopSignal()
    rank, world = comm.get_rank(), comm.get_world_size()
    log = engine.logger("finetune", files.log_file, rank)
    img_size = _start(cfg, files, rank, world, log)
    if torch.distributed.is_initialized():
        log.info("process group: %s, %d process(es), DDP", torch.distributed.get_backend(), world)
    train_set, _ = register(cfg.framework, files.data)
    dicts = get_detection_dataset_dicts([train_set])
    iters, milestones = schedule_length(cfg, len(dicts))
    model = build_model(cfg, files.pretrained, img_size).to(device())
    model.train()
    trainer, scheduler = _trainer(cfg, model, dicts, iters, milestones)
    checkpointer = AtomicCheckpointer(model, files.work_dir, trainer=trainer)
    periodic = StateCheckpointer(checkpointer, cfg.checkpoint_every, max_iter=iters, max_to_keep=1)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=scheduler),
        periodic,
        StopOnSignal(stop, checkpointer, iters, log),
        *([hooks.PeriodicWriter([JSONWriter(f"{files.work_dir}/metrics.json")], period=1),
           ProgressBar(iters, f"finetune {cfg.backbone} {cfg.framework}")] if rank == 0 else []),
    ])
    start_iter = 0
    if checkpointer.has_checkpoint():
        checkpointer.resume_or_load(None, resume=True)
        start_iter = trainer.iter + 1
        if rank == 0:
            _keep_resumed(checkpointer, periodic, log)
        log.info("resuming from %s after iteration %d of %d", checkpointer.get_checkpoint_file(), start_iter, iters)
    else:
        log.info("starting %s %s from %s: %d iterations (lr steps at %s), batch %d over %d process(es) on %s, "
                 "%d training images", cfg.framework, cfg.backbone, files.pretrained, iters, milestones or "none",
                 cfg.batch_size, world, device().type, len(dicts))
    t0 = time.perf_counter()
    if start_iter < iters:
        trainer.train(start_iter, iters)
    if rank == 0:
        atomic_torch_save({"model": model.state_dict(), "backbone": cfg.backbone, "task": cfg.framework,
                           "iters": iters, "pretrain_img_size": img_size,
                           "config": {**asdict(cfg), "world_size": world}}, files.output)
        log.info("done in %.0f s -> %s", time.perf_counter() - t0, files.output)
        engine.record_run(Path(files.output).parent, world, time.perf_counter() - t0)
        engine.write_curves("finetune", Path(files.output).parent)
    comm.synchronize()


def run(cfg: FinetuneSettings, files: RunFiles) -> int:
    """One process: 0 when done, 1 on bad input or settings (one log line), REQUEUE_EXIT when stopped by a
    signal with its state saved. A process that detectron2's launch started exits with that status."""
    code = 0
    try:
        finetune(cfg, files)
    except (FileNotFoundError, CheckpointError, TrainingError, DiskFull) as e:
        setup_logging(files.log_file, "finetune").error("%s", e)
        code = 1
    except Requeue:
        code = REQUEUE_EXIT
    world = comm.get_world_size()
    if torch.distributed.is_initialized():
        # A process group left alive aborts the process at interpreter exit ("terminate called without an active
        # exception"), turning a finished run into a failed one. Its last references go first: detectron2's
        # handle on this machine's group, and the DDP model that the trainer's reference cycles keep.
        comm._LOCAL_PROCESS_GROUP = None
        gc.collect()
        torch.distributed.destroy_process_group()
    if world > 1 and code:
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
    p = engine.parser("fine-tune a detectron2 model with a registered backbone", ("output",))
    p.add_argument("--pretrained", default="", help="ImageNet checkpoint of the backbone (empty: random init)")
    p.add_argument("--gpus", type=int, default=1, help="processes on this node, one per GPU")
    args = p.parse_args(argv)
    log = setup_logging(args.log_file, "finetune")
    try:
        cfg, data = engine.load(args, "finetune", log)
        task(cfg.framework)
        nodes, node_rank, url = machines()
    except (TrainingError, UnknownTask) as e:
        log.error("%s", e)
        return 1
    files = RunFiles(args.pretrained or None, str(data), str(args.work_dir), str(args.output), args.gpus,
                     args.log_file)
    if nodes * files.gpus <= 1:
        return run(cfg, files)
    # The stop signal is for the training processes (each installs its handler); this one only waits for them.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        distributed_launch()(run, files.gpus, nodes, node_rank, url, args=(cfg, files))
    except torch.multiprocessing.ProcessExitedException as e:
        return e.exit_code if e.exit_code in (1, REQUEUE_EXIT) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

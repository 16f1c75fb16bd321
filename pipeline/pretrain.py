"""ImageNet-style pretraining of any registered model (the DeiT/ConvNeXt recipe), resumable from atomic
checkpoints.

    python -m pipeline.pretrain --settings .../settings.yaml --work-dir .../state --output .../model.pth \
        --metrics .../metrics.json

Every value comes from the job's settings file (pipeline/settings.py PretrainSettings: the recipe's keys).

The recipe's pieces are timm's: RandAugment and random erasing (`create_transform`), Mixup/CutMix with soft
targets, the cosine schedule with warm-up, and the weight EMA. AMP (`--amp bf16|fp16`), channels-last and a
deterministic mode are switches, and `compile` runs the training steps through `torch.compile` (off by
default; the first steps then take the compilation time). The work dir holds `last.pth` (model, optimizer,
scheduler, EMA, scaler, step and RNG states), written atomically every `checkpoint_every` steps and at the end of
each epoch; a re-run with the same work dir continues from it. Each sample's augmentation is seeded from (seed, epoch,
index), and the batch order from (seed, epoch), so a resumed run sees exactly the batches an uninterrupted
one would.

DDP: started by torchrun (or any launcher that sets RANK/WORLD_SIZE/LOCAL_RANK and MASTER_ADDR/PORT), each of
the WORLD_SIZE processes takes its slice of every global batch (`--batch-size` is the global batch) and the
gradients are averaged; rank 0 writes checkpoints, metrics and the log.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data import Mixup, auto_augment, create_transform
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from tqdm import tqdm

import models
from pipeline import engine
from pipeline.data.imagenet import read_classes
from pipeline.engine import TrainingError
from pipeline.io import DiskFull, atomic_torch_save, atomic_write_json
from pipeline.logs import setup_logging
from pipeline.preempt import REQUEUE_EXIT, Requeue, StopSignal
from pipeline.settings import PretrainSettings


def _posterize(img, bits_to_keep, **kw):
    """timm's RandAugment asks to keep 0 bits at the top of its magnitude range (`inc1` with magnitude noise
    reaches it); Pillow 13 rejects 0 where the Pillow of the papers' runs returned a black image (every bit
    masked). That result for 0, timm's op otherwise."""
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return auto_augment.posterize(img, bits_to_keep, **kw)


for _name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
    auto_augment.NAME_TO_OP[_name] = _posterize


class ImageNetFolder(Dataset):
    """`<root>/<split>/<wnid>/*.JPEG` with targets in the 1000-class index of `<root>/classes.tsv`."""

    def __init__(self, root: Path, split: str, transform):
        wnid_to_index = {c.wnid: c.index for c in read_classes(root / "classes.tsv")}
        self.folder = ImageFolder(str(root / split))
        unknown = sorted(set(self.folder.classes) - set(wnid_to_index))
        if unknown:
            raise TrainingError(f"{root / split}: class folders {unknown[:5]} are not ImageNet-1k wnids "
                                f"listed in {root / 'classes.tsv'}")
        self.targets = [wnid_to_index[self.folder.classes[t]] for _, t in self.folder.samples]
        self.transform = transform
        self.epoch_seed = 0

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, index: int):
        seed = (self.epoch_seed * 1_000_003 + index) % 2**31
        random.seed(seed)
        torch.manual_seed(seed)
        img = self.folder.loader(self.folder.samples[index][0])
        return self.transform(img), self.targets[index]


class _Subset(Dataset):
    """Items at given positions of a base dataset, with the base's epoch seed set per item."""

    def __init__(self, base: ImageNetFolder, order: list[int], epoch_seed: int):
        self.base, self.order, self.epoch_seed = base, order, epoch_seed

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        self.base.epoch_seed = self.epoch_seed
        return self.base[self.order[i]]


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed * 10_007 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    full = n // batch_size  # drop_last, as in ImageNet training
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(full)]


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                       has_gauss, gauss], "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def evaluate(model, loader, channels_last: bool, device: torch.device = torch.device("cpu")) -> dict:
    model.eval()
    correct1 = correct5 = total = 0
    with torch.inference_mode():
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            top5 = model(images).topk(5, dim=1).indices
            hits = top5 == targets[:, None]
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            total += targets.numel()
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "val_images": total}


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device): one process per GPU under torchrun/SLURM (a process group and DDP, even for one
    process), or the single local process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if "RANK" in os.environ and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    return (dist.get_rank() if dist.is_initialized() else 0), world, device


def set_deterministic(on: bool) -> None:
    """Bit-reproducible kernels (at some speed cost); a resumed run then matches an uninterrupted one."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on


def _lengths(cfg: PretrainSettings, per_epoch: int) -> tuple[int, int]:
    """(steps, warm-up steps): from epochs (with the recipe's cool-down epochs) or given in steps."""
    if cfg.epochs:
        return (cfg.epochs + cfg.cooldown_epochs) * per_epoch, round(cfg.warmup_epochs * per_epoch)
    if cfg.steps <= 0:
        raise TrainingError("no training length: the settings give neither epochs nor steps")
    return cfg.steps, cfg.warmup_steps


def peak_lr(cfg: PretrainSettings) -> float:
    """The recipe's lr is given per `lr_batch` images and scales linearly with the batch."""
    return cfg.lr * cfg.batch_size / cfg.lr_batch


@dataclass
class Data:
    train: ImageNetFolder
    val: ImageNetFolder
    per_epoch: int
    total: int
    warmup: int


def build_data(cfg: PretrainSettings, root: Path) -> Data:
    train_tf = create_transform(cfg.img_size, is_training=True, interpolation="bicubic", hflip=0.5,
                                auto_augment=cfg.randaugment or None, re_prob=cfg.random_erasing,
                                re_mode="pixel", re_count=1)
    eval_tf = create_transform(cfg.img_size, is_training=False, interpolation="bicubic", crop_pct=cfg.eval_crop_pct)
    train_set = ImageNetFolder(root, "train", train_tf)
    if len(train_set) < cfg.batch_size:
        raise TrainingError(f"{root / 'train'}: {len(train_set)} images, fewer than one batch of {cfg.batch_size}")
    per_epoch = len(train_set) // cfg.batch_size
    total, warmup = _lengths(cfg, per_epoch)
    return Data(train_set, ImageNetFolder(root, "val", eval_tf), per_epoch, total, warmup)


@dataclass
class Trainer:
    """The model and everything that changes as it trains; `state()` is what `last.pth` holds."""

    model: torch.nn.Module
    net: torch.nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    mixup: Mixup | None
    step: int = 0

    def state(self, cfg: PretrainSettings) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None, "step": self.step,
                "rng": _rng_state(), "config": asdict(cfg)}

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"])
        self.step = state["step"]


def build_trainer(cfg: PretrainSettings, data: Data, device: torch.device, world: int, **model_overrides) -> Trainer:
    """`model_overrides`: the builder's switches (`fused_attn=False`...), for comparisons (pipeline/gpu_check.py)."""
    model = models.create(cfg.backbone, num_classes=1000, drop_path_rate=cfg.drop_path, img_size=cfg.img_size,
                          **model_overrides)
    model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist.is_initialized() else model
    if cfg.compile:
        net = torch.compile(net)  # the step's forward; `model` keeps the state dict's keys and the EMA's source
    lr = peak_lr(cfg)
    optimizer = engine.optimizer(param_groups_weight_decay(model, cfg.weight_decay), cfg.optimizer, lr, nesterov=True)
    scheduler = CosineLRScheduler(optimizer, t_initial=data.total, lr_min=min(cfg.min_lr, lr), warmup_t=data.warmup,
                                  warmup_lr_init=cfg.warmup_lr, t_in_epochs=False)
    mixup = None
    if cfg.mixup or cfg.cutmix:
        if cfg.batch_size % 2:
            raise TrainingError(f"batch_size {cfg.batch_size}: Mixup/CutMix need an even batch")
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, switch_prob=cfg.mixup_switch_prob,
                      label_smoothing=cfg.label_smoothing, num_classes=1000)
    return Trainer(model, net, optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16"),
                   ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None, mixup)


def train_step(t: Trainer, cfg: PretrainSettings, images, targets, world: int) -> float:
    """One optimizer step on this process's slice of a global batch; the loss averaged over the processes."""
    if t.mixup is not None:
        images, targets = t.mixup(images, targets)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(images.device.type, dtype=AMP_DTYPES.get(cfg.amp), enabled=cfg.amp != "off"):
        logits = t.net(images)
        loss = (SoftTargetCrossEntropy()(logits, targets) if t.mixup is not None
                else F.cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing))
    reduced = loss.detach().clone()
    if world > 1:
        dist.all_reduce(reduced)
    value = reduced.item() / world
    engine.check_finite(value, f"step {t.step + 1} ({cfg.backbone})", t.optimizer.param_groups[0]["lr"])
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    if cfg.clip_grad:
        t.scaler.unscale_(t.optimizer)
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), cfg.clip_grad)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    if t.ema is not None:
        t.ema.update(t.model, step=t.step)
    t.step += 1
    t.scheduler.step_update(t.step)
    return value


def epoch_loader(data: Data, cfg: PretrainSettings, step: int, rank: int, world: int) -> DataLoader:
    """The rest of the epoch that `step` falls in, this process's slice of each global batch."""
    epoch, pos = divmod(step, data.per_epoch)
    local = cfg.batch_size // world
    batches = _batches(len(data.train), cfg.batch_size, cfg.seed, epoch)[pos:]
    order = [i for b in batches for i in b[rank * local:(rank + 1) * local]]
    return DataLoader(_Subset(data.train, order, cfg.seed * 1_000 + epoch), batch_size=local, shuffle=False,
                      num_workers=cfg.workers, drop_last=True)


def finish(t: Trainer, cfg: PretrainSettings, data: Data, out, device, loss: float, seconds: float) -> dict:
    """Validation top-1/top-5 (and of the EMA weights), the model file and the metrics file."""
    val_loader = DataLoader(data.val, batch_size=cfg.batch_size, num_workers=cfg.workers)
    metrics = evaluate(t.model, val_loader, cfg.channels_last, device)
    if t.ema is not None:
        metrics.update({f"{k}_ema": v for k, v in evaluate(t.ema.module, val_loader, cfg.channels_last,
                                                           device).items() if k != "val_images"})
    metrics.update({"model": cfg.backbone, "steps": data.total, "final_loss": loss,
                    "train_seconds_this_run": round(seconds, 1)})
    atomic_torch_save({"model": t.model.state_dict(), "ema": t.ema.module.state_dict() if t.ema is not None else None,
                       "arch": cfg.backbone, "steps": data.total, "img_size": cfg.img_size}, out.output)
    atomic_write_json(out.metrics, metrics)
    return metrics


def _resume_or_start(t: Trainer, state_file: Path, cfg: PretrainSettings, data: Data, log) -> None:
    if not state_file.exists():
        log.info("starting %s: %d steps (%d per epoch), batch %d, %d train images, lr %.2e, mixup %s, cutmix %s, "
                 "randaugment %s, EMA %s, AMP %s", cfg.backbone, data.total, data.per_epoch, cfg.batch_size,
                 len(data.train), peak_lr(cfg), cfg.mixup, cfg.cutmix, cfg.randaugment or "off",
                 cfg.ema_decay or "off", cfg.amp)
        return
    try:
        t.load(models.load_file(state_file))
    except models.CheckpointError as e:
        raise TrainingError(f"{e}; it is this run's resume state: delete it to start the run afresh") from None
    log.info("resuming from %s at step %d of %d", state_file, t.step, data.total)


def _leave(world: int) -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _start(cfg: PretrainSettings, root: Path, out, rank: int, world: int, log) -> None:
    """Check the settings against this run's processes, seed, and claim the work dir."""
    if cfg.amp not in ("off", *AMP_DTYPES):
        raise TrainingError(f"amp {cfg.amp!r}: valid values are off, bf16, fp16")
    set_deterministic(cfg.deterministic)
    engine.seed_everything(cfg.seed)
    if cfg.batch_size % world:
        raise TrainingError(f"batch_size {cfg.batch_size} is the global batch; it must divide among {world} processes")
    engine.claim(out.work_dir, engine.fingerprint(cfg, root, skip=("workers", "steps", "checkpoint_every", "compile")),
                 log, rank, dist.barrier if dist.is_initialized() else lambda: None)


def train(cfg: PretrainSettings, root: Path, out, log_file: str | None = None) -> dict:
    """The whole run (this process's part of it): resumes from the work dir's `last.pth` when there is one."""
    stop = StopSignal()
    rank, world, device = init_distributed()
    log = engine.logger("pretrain", log_file, rank)
    _start(cfg, root, out, rank, world, log)
    if dist.is_initialized():
        log.info("process group: %s, %d process(es), DDP", dist.get_backend(), world)
    data = build_data(cfg, root)
    t = build_trainer(cfg, data, device, world)
    state_file = out.work_dir / "last.pth"
    _resume_or_start(t, state_file, cfg, data, log)

    def save() -> None:
        if rank == 0:
            atomic_torch_save(t.state(cfg), state_file)

    bar = tqdm(total=data.total, initial=t.step, desc=f"pretrain {cfg.backbone}", unit="step", dynamic_ncols=True,
               disable=rank > 0)
    history = engine.History(Path(out.output).parent, rank)
    start, loss = time.perf_counter(), float("nan")
    t.model.train()
    while t.step < data.total:
        for images, targets in epoch_loader(data, cfg, t.step, rank, world):
            lr = t.optimizer.param_groups[0]["lr"]
            loss = train_step(t, cfg, images.to(device), targets.to(device), world)
            history.log(step=t.step, loss=loss, lr=lr)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}")
            if t.step % cfg.checkpoint_every == 0 or t.step % data.per_epoch == 0 or t.step == data.total:
                save()
                log.info("step %d/%d loss %.4f, checkpoint %s", t.step, data.total, loss, state_file)
            if t.step == data.total:
                break
            if stop.requested(world):
                save()
                log.info("stop signal: state saved at step %d of %d in %s; run again to resume", t.step,
                         data.total, state_file)
                history.close()
                if rank == 0:
                    engine.record_run(Path(out.output).parent, world, time.perf_counter() - start)
                bar.close()
                _leave(world)
                raise Requeue
    bar.close()
    if rank:
        _leave(world)
        return {}
    metrics = finish(t, cfg, data, out, device, loss, time.perf_counter() - start)
    history.log(step=t.step, **{k: metrics[k] for k in ("top1", "top5")})
    history.close()
    engine.record_run(Path(out.output).parent, world, time.perf_counter() - start)
    engine.write_curves("pretrain", Path(out.output).parent)
    log.info("done: top1 %.1f top5 %.1f on %d val images -> %s", metrics["top1"], metrics["top5"],
             metrics["val_images"], out.output)
    _leave(world)
    return metrics


def main(argv=None) -> int:
    parser = engine.parser("pretrain a registered model on an ImageNet-format folder", ("output", "metrics"))
    args = parser.parse_args(argv)
    log = setup_logging(args.log_file, "pretrain")
    try:
        cfg, root = engine.load(args, "pretrain", log)
        train(cfg, root, args, args.log_file)
    except (TrainingError, models.CheckpointError, DiskFull) as e:
        log.error("%s", e)
        return 1
    except Requeue:
        return REQUEUE_EXIT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

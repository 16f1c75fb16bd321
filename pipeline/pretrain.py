"""ImageNet-style pretraining of any registered model (the DeiT/ConvNeXt recipe), resumable from atomic
checkpoints.

    python -m pipeline.pretrain --model pvt_tiny --data data/imagenet --work-dir .../state \
        --output .../model.pth --metrics .../metrics.json --epochs 300 --warmup-epochs 5 --batch-size 1024 \
        --lr 1e-3 --mixup 0.8 --cutmix 1.0 --randaugment rand-m9-mstd0.5-inc1 --random-erasing 0.25

The recipe's pieces are timm's: RandAugment and random erasing (`create_transform`), Mixup/CutMix with soft
targets, the cosine schedule with warm-up, and the weight EMA. AMP (`--amp bf16|fp16`), channels-last and a
deterministic mode are switches. The work dir holds `last.pth` (model, optimizer, scheduler, EMA, scaler,
step and RNG states), written atomically every `--checkpoint-every` steps and at the end of each epoch; a
re-run with the same work dir continues from it. Each sample's augmentation is seeded from (seed, epoch,
index), and the batch order from (seed, epoch), so a resumed run sees exactly the batches an uninterrupted
one would.

DDP: started by torchrun (or any launcher that sets RANK/WORLD_SIZE/LOCAL_RANK and MASTER_ADDR/PORT), each of
the WORLD_SIZE processes takes its slice of every global batch (`--batch-size` is the global batch) and the
gradients are averaged; rank 0 writes checkpoints, metrics and the log.
"""

from __future__ import annotations

import json
import math
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
from pipeline.io import atomic_torch_save, atomic_write_json, claim_work_dir
from pipeline.preempt import REQUEUE_EXIT, Requeue, StopSignal
from pipeline.cli import parse_settings
from pipeline.data.imagenet import read_classes
from pipeline.logs import setup_logging


def _posterize(img, bits_to_keep, **kw):
    """timm's RandAugment asks to keep 0 bits at the top of its magnitude range (`inc1` with magnitude noise
    reaches it); Pillow 13 rejects 0 where the Pillow of the papers' runs returned a black image (every bit
    masked). That result for 0, timm's op otherwise."""
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return auto_augment.posterize(img, bits_to_keep, **kw)


for _name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
    auto_augment.NAME_TO_OP[_name] = _posterize


@dataclass
class PretrainConfig:
    model: str
    data: str
    work_dir: str
    output: str
    metrics: str
    # Length: `epochs` (with `warmup_epochs`) over the training set, or `steps` (with `warmup_steps`).
    steps: int = 20
    epochs: int = 0
    warmup_steps: int = 2
    warmup_epochs: float = 0.0
    batch_size: int = 8
    img_size: int = 224
    optimizer: str = "adamw"
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_switch_prob: float = 0.5
    randaugment: str = ""
    random_erasing: float = 0.0
    ema_decay: float = 0.0
    clip_grad: float = 0.0
    drop_path_rate: float = 0.1
    eval_crop_pct: float = 0.875
    amp: str = "off"
    channels_last: bool = False
    deterministic: bool = False
    checkpoint_every: int = 5
    seed: int = 0
    workers: int = 0
    log_file: str | None = None


class TrainingError(Exception):
    pass


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
    """(rank, world size, device): one process per GPU under torchrun/SLURM, or the single local process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


def set_deterministic(on: bool) -> None:
    """Bit-reproducible kernels (at some speed cost); a resumed run then matches an uninterrupted one."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on


def build_optimizer(model, cfg: PretrainConfig) -> torch.optim.Optimizer:
    groups = param_groups_weight_decay(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise TrainingError(f"unknown optimizer {cfg.optimizer!r}; valid: adamw, sgd")


def train(cfg: PretrainConfig) -> dict:
    stop = StopSignal()
    rank, world, device = init_distributed()
    log = setup_logging(cfg.log_file if rank == 0 else None, "pretrain")
    if rank:
        log.setLevel("WARNING")
    if cfg.amp not in ("off", *AMP_DTYPES):
        raise TrainingError(f"--amp {cfg.amp!r}: valid values are off, bf16, fp16")
    set_deterministic(cfg.deterministic)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.batch_size % world:
        raise TrainingError(f"--batch-size {cfg.batch_size} is the global batch; it must divide among {world} "
                            "processes")
    work = Path(cfg.work_dir)
    data = Path(cfg.data)
    fingerprint = {k: v for k, v in asdict(cfg).items()
                   if k not in ("work_dir", "output", "metrics", "log_file", "workers", "steps", "checkpoint_every")}
    manifest = data.with_name(data.name + ".manifest.json")
    if manifest.exists():
        fingerprint["data_index_sha256"] = json.loads(manifest.read_text())["index_sha256"]
    # `steps` may grow between runs (training is extended); anything else starts a fresh run.
    if rank == 0:
        claim_work_dir(work, fingerprint, log)
    if world > 1:
        dist.barrier()

    train_tf = create_transform(cfg.img_size, is_training=True, interpolation="bicubic", hflip=0.5,
                                auto_augment=cfg.randaugment or None, re_prob=cfg.random_erasing,
                                re_mode="pixel", re_count=1)
    eval_tf = create_transform(cfg.img_size, is_training=False, interpolation="bicubic", crop_pct=cfg.eval_crop_pct)
    train_set = ImageNetFolder(data, "train", train_tf)
    val_set = ImageNetFolder(data, "val", eval_tf)
    if len(train_set) < cfg.batch_size:
        raise TrainingError(f"{data / 'train'}: {len(train_set)} images, fewer than one batch of {cfg.batch_size}")
    per_epoch = len(train_set) // cfg.batch_size
    total = cfg.epochs * per_epoch if cfg.epochs else cfg.steps
    warmup = round(cfg.warmup_epochs * per_epoch) if cfg.epochs else cfg.warmup_steps

    model = models.create(cfg.model, num_classes=1000, drop_path_rate=cfg.drop_path_rate, img_size=cfg.img_size)
    model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    optimizer = build_optimizer(model, cfg)
    scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=cfg.min_lr, warmup_t=warmup,
                                  warmup_lr_init=cfg.warmup_lr, t_in_epochs=False)
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
    mixup = None
    if cfg.mixup or cfg.cutmix:
        if cfg.batch_size % 2:
            raise TrainingError(f"--batch-size {cfg.batch_size}: Mixup/CutMix need an even batch")
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, switch_prob=cfg.mixup_switch_prob,
                      label_smoothing=cfg.label_smoothing, num_classes=1000)
    soft_loss = SoftTargetCrossEntropy()
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    step, state_file = 0, work / "last.pth"
    if state_file.exists():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"])
        step = state["step"]
        log.info("resuming from %s at step %d of %d", state_file, step, total)
    else:
        log.info("starting %s: %d steps (%d per epoch), batch %d, %d train images, lr %.2e, mixup %s, cutmix %s, "
                 "randaugment %s, EMA %s, AMP %s", cfg.model, total, per_epoch, cfg.batch_size, len(train_set), cfg.lr,
                 cfg.mixup, cfg.cutmix, cfg.randaugment or "off", cfg.ema_decay or "off", cfg.amp)

    def save_state() -> None:
        if rank:
            return
        atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                           "ema": ema.state_dict() if ema is not None else None, "step": step,
                           "rng": _rng_state(), "config": asdict(cfg)}, state_file)

    bar = tqdm(total=total, initial=step, desc=f"pretrain {cfg.model}", unit="step", dynamic_ncols=True,
               disable=rank > 0)
    local = cfg.batch_size // world
    start = time.perf_counter()
    model.train()
    loss_value = float("nan")
    while step < total:
        epoch, pos = divmod(step, per_epoch)
        batches = _batches(len(train_set), cfg.batch_size, cfg.seed, epoch)[pos:]
        order = [i for b in batches for i in b[rank * local:(rank + 1) * local]]
        loader = DataLoader(_Subset(train_set, order, cfg.seed * 1_000 + epoch), batch_size=local,
                            shuffle=False, num_workers=cfg.workers, drop_last=True)
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            if mixup is not None:
                images, targets = mixup(images, targets)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=AMP_DTYPES.get(cfg.amp), enabled=cfg.amp != "off"):
                logits = net(images)
                loss = (soft_loss(logits, targets) if mixup is not None
                        else F.cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing))
            reduced = loss.detach().clone()
            if world > 1:
                dist.all_reduce(reduced)
            loss_value = reduced.item() / world
            if not math.isfinite(loss_value):
                raise TrainingError(f"loss is {loss_value} at step {step + 1} ({cfg.model}, lr "
                                    f"{optimizer.param_groups[0]['lr']:.2e}); lower the lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model, step=step)
            step += 1
            scheduler.step_update(step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
            if step % cfg.checkpoint_every == 0 or step % per_epoch == 0 or step == total:
                save_state()
                log.info("step %d/%d loss %.4f, checkpoint %s", step, total, loss_value, state_file)
            if step == total:
                break
            if stop.requested(world):
                save_state()
                log.info("stop signal: state saved at step %d of %d in %s; run again to resume", step, total,
                         state_file)
                bar.close()
                if world > 1:
                    dist.barrier()
                    dist.destroy_process_group()
                raise Requeue
    bar.close()
    if rank:
        dist.barrier()
        dist.destroy_process_group()
        return {}

    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, num_workers=cfg.workers)
    metrics = evaluate(model, val_loader, cfg.channels_last, device)
    if ema is not None:
        metrics.update({f"{k}_ema": v for k, v in evaluate(ema.module, val_loader, cfg.channels_last, device).items()
                        if k != "val_images"})
    metrics.update({"model": cfg.model, "steps": total, "final_loss": loss_value,
                    "train_seconds_this_run": round(time.perf_counter() - start, 1)})
    atomic_torch_save({"model": model.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
                       "arch": cfg.model, "steps": total, "img_size": cfg.img_size}, cfg.output)
    atomic_write_json(cfg.metrics, metrics)
    log.info("done: top1 %.1f top5 %.1f on %d val images -> %s", metrics["top1"], metrics["top5"],
             metrics["val_images"], cfg.output)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


def main(argv=None) -> int:
    cfg = parse_settings(PretrainConfig, argv, "pretrain a registered model on an ImageNet-format folder")
    try:
        train(cfg)
    except (TrainingError, models.CheckpointError) as e:
        setup_logging(cfg.log_file, "pretrain").error("%s", e)
        return 1
    except Requeue:
        return REQUEUE_EXIT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

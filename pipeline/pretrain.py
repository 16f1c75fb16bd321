"""ImageNet-style pretraining of any registered model, resumable from atomic checkpoints.

    python -m pipeline.pretrain --model pvt_tiny --data data/embedded/imagenet \
        --work-dir results/pretrain/pvt_tiny/demo/state --output results/pretrain/pvt_tiny/demo/model.pth \
        --metrics results/pretrain/pvt_tiny/demo/metrics.json --steps 20

The work dir holds `last.pth` (model, optimizer, scheduler, step and RNG states), written atomically
every `--checkpoint-every` steps and at the end; a re-run with the same work dir continues from it.
Each sample's augmentation is seeded from (seed, epoch, index), and the batch order from (seed, epoch),
so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import create_transform
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from tqdm import tqdm

import models
from pipeline.io import atomic_torch_save, atomic_write_json, claim_work_dir
from pipeline.cli import parse_settings
from pipeline.data.imagenet import read_classes
from pipeline.logs import setup_logging


@dataclass
class PretrainConfig:
    model: str
    data: str
    work_dir: str
    output: str
    metrics: str
    steps: int = 20
    batch_size: int = 8
    img_size: int = 224
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_steps: int = 2
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    drop_path_rate: float = 0.1
    checkpoint_every: int = 5
    seed: int = 0
    workers: int = 0
    channels_last: bool = False
    log: str | None = None


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


def evaluate(model, loader, channels_last: bool) -> dict:
    model.eval()
    correct1 = correct5 = total = 0
    with torch.inference_mode():
        for images, targets in loader:
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            top5 = model(images).topk(5, dim=1).indices
            hits = top5 == targets[:, None]
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            total += targets.numel()
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "val_images": total}


def train(cfg: PretrainConfig) -> dict:
    log = setup_logging(cfg.log, "pretrain")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    work = Path(cfg.work_dir)
    data = Path(cfg.data)
    fingerprint = {k: v for k, v in asdict(cfg).items()
                   if k not in ("work_dir", "output", "metrics", "log", "workers", "steps", "checkpoint_every")}
    manifest = data.with_name(data.name + ".manifest.json")
    if manifest.exists():
        fingerprint["data_index_sha256"] = json.loads(manifest.read_text())["index_sha256"]
    # `steps` may grow between runs (training is extended); anything else starts a fresh run.
    claim_work_dir(work, fingerprint, log)

    train_tf = create_transform(cfg.img_size, is_training=True, interpolation="bicubic", hflip=0.5)
    eval_tf = create_transform(cfg.img_size, is_training=False, interpolation="bicubic", crop_pct=0.875)
    train_set = ImageNetFolder(data, "train", train_tf)
    val_set = ImageNetFolder(data, "val", eval_tf)
    if len(train_set) < cfg.batch_size:
        raise TrainingError(f"{data / 'train'}: {len(train_set)} images, fewer than one batch of {cfg.batch_size}")

    model = models.create(cfg.model, num_classes=1000, drop_path_rate=cfg.drop_path_rate, img_size=cfg.img_size)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = CosineLRScheduler(optimizer, t_initial=cfg.steps, lr_min=cfg.min_lr, warmup_t=cfg.warmup_steps,
                                  warmup_lr_init=1e-6, t_in_epochs=False)

    step, state_file = 0, work / "last.pth"
    if state_file.exists():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        step = state["step"]
        log.info("resuming from %s at step %d of %d", state_file, step, cfg.steps)
    else:
        log.info("starting %s: %d steps, batch %d, %d train images", cfg.model, cfg.steps, cfg.batch_size,
                 len(train_set))

    def save_state() -> None:
        atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "step": step, "rng": _rng_state(),
                           "config": asdict(cfg)}, state_file)

    per_epoch = len(train_set) // cfg.batch_size
    bar = tqdm(total=cfg.steps, initial=step, desc=f"pretrain {cfg.model}", unit="step", dynamic_ncols=True)
    start = time.perf_counter()
    model.train()
    loss_value = float("nan")
    while step < cfg.steps:
        epoch, pos = divmod(step, per_epoch)
        batches = _batches(len(train_set), cfg.batch_size, cfg.seed, epoch)[pos:]
        order = [i for b in batches for i in b]
        loader = DataLoader(_Subset(train_set, order, cfg.seed * 1_000 + epoch), batch_size=cfg.batch_size,
                            shuffle=False, num_workers=cfg.workers, drop_last=True)
        for images, targets in loader:
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(images), targets, label_smoothing=cfg.label_smoothing)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingError(f"loss is {loss_value} at step {step + 1} ({cfg.model}, lr "
                                    f"{optimizer.param_groups[0]['lr']:.2e}); lower the lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_state()
                log.info("step %d/%d loss %.4f, checkpoint %s", step, cfg.steps, loss_value, state_file)
            if step == cfg.steps:
                break
    bar.close()

    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, num_workers=cfg.workers)
    metrics = evaluate(model, val_loader, cfg.channels_last)
    metrics.update({"model": cfg.model, "steps": cfg.steps, "final_loss": loss_value,
                    "train_seconds_this_run": round(time.perf_counter() - start, 1)})
    atomic_torch_save({"model": model.state_dict(), "arch": cfg.model, "steps": cfg.steps,
                       "img_size": cfg.img_size}, cfg.output)
    atomic_write_json(cfg.metrics, metrics)
    log.info("done: top1 %.1f top5 %.1f on %d val images -> %s", metrics["top1"], metrics["top5"],
             metrics["val_images"], cfg.output)
    return metrics


def main(argv=None) -> int:
    cfg = parse_settings(PretrainConfig, argv, "pretrain a registered model on an ImageNet-format folder")
    try:
        train(cfg)
    except (TrainingError, models.CheckpointError) as e:
        setup_logging(cfg.log, "pretrain").error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

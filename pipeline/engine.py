"""What the engines share: the command line around the settings file (pretraining, fine-tuning and
evaluation), and for the two training engines (pipeline/pretrain.py, pipeline/finetune.py) start-up (this
process's rank, logging, seed, the work dir claimed for exactly this run), the optimizer and the stop on a
non-finite loss. Light: torch is imported where it is used.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import random
from pathlib import Path

from pipeline import paths, registry, settings
from pipeline.data import sources
from pipeline.data.extract import MARKER
from pipeline.data.manifest import index_hash
from pipeline.io import RunLocked, atomic_write_json, atomic_write_text, claim_work_dir, lock_run
from pipeline.logs import setup_logging


class TrainingError(Exception):
    """Bad settings or data, or a run that diverged: one log line, exit 1."""


def parser(description: str, files: tuple[str, ...]) -> argparse.ArgumentParser:
    """`--settings` (the job's resolved settings file), the dataset, the work dir, the job's other `files` (its
    declared outputs, an input checkpoint) and the log file; paths only, every value comes from the settings
    file. The pretraining, fine-tuning and evaluation commands all take it."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--settings", required=True, type=Path, help="the job's settings.yaml (pipeline/settings.py)")
    p.add_argument("--data", type=Path, help="prepared dataset root (default: the settings file's dataset.root)")
    p.add_argument("--work-dir", required=True, type=Path, help="resumable state of this run (evaluation: its files)")
    for name in files:
        p.add_argument(f"--{name}", required=True, type=Path)
    p.add_argument("--log-file", help="also write the log to this file")
    return p


def load(args, job: str, log):
    """The engine's settings dataclass from `--settings`, and the dataset root; names what the file records that
    this engine does not read."""
    try:
        cfg, unread = settings.engine_config(args.settings, job)
    except registry.ConfigError as e:
        raise TrainingError(str(e)) from None
    if unread:
        log.info("settings recorded but not read by this engine: %s", ", ".join(unread))
    data = args.data or (settings.read(args.settings).get("dataset") or {}).get("root")
    if not data:
        raise TrainingError(f"{args.settings}: no dataset.root; give --data")
    check_data(Path(data))
    return cfg, Path(data)


def check_data(data: Path) -> None:
    """The prepared dataset is there: a manifest whose files were deleted (or a prepare cut short) is named with
    the way to prepare it again."""
    manifest = Path(sources.manifest(str(data.parent), data.name))
    if manifest.exists() and not (data / MARKER).is_file():
        raise TrainingError(f"{data}: prepared data missing or incomplete, though its manifest {manifest} exists; "
                            "delete the manifest and run the target again (it re-runs prepare)")
    if not data.is_dir():
        raise TrainingError(f"{data}: no prepared dataset there; run the target through snakemake (it prepares the "
                            "data) or give --data")


def logger(name: str, log_file: str | None, rank: int):
    """Rank 0 logs to the console and the log file; other processes only their warnings. The models' own lines
    (checkpoint keys left out or not matching, the full lists at DEBUG) go to the same file."""
    log = setup_logging(log_file if rank == 0 else None, name)
    details = setup_logging(log_file if rank == 0 else None, "models", file_level=logging.DEBUG)
    if rank:
        log.setLevel("WARNING")
        details.setLevel("WARNING")
    return log


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def fingerprint(cfg, data: Path, skip: tuple[str, ...] = ("workers", "checkpoint_every")) -> dict:
    """What makes a run this run: its settings (less those that do not change the result) and the dataset's
    index hash. `steps`/`iters` may grow between runs (training is extended); the callers leave them out."""
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    index = index_hash(sources.manifest(str(data.parent), data.name))
    if index is not None:
        out["data_index_sha256"] = index
    return out


def claim(work_dir: Path, run: dict, log, rank: int, barrier) -> None:
    """Rank 0 takes the run's lock (`<work dir>.lock`: one trainer per run) and makes the work dir hold state of
    exactly this run (pipeline.io.claim_work_dir); all wait."""
    if rank == 0:
        try:
            lock_run(work_dir.with_name(work_dir.name + ".lock"))
        except RunLocked as e:
            raise TrainingError(str(e)) from None
        claim_work_dir(work_dir, run, log)
    barrier()


def optimizer(groups, name: str, lr: float, nesterov: bool):
    """AdamW, or SGD with momentum 0.9 (Nesterov in the DeiT/timm ImageNet recipes, plain in mmdet's)."""
    import torch

    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=nesterov)
    raise TrainingError(f"unknown optimizer {name!r}; valid: adamw, sgd")


def check_finite(loss: float, where: str, lr: float) -> None:
    if not math.isfinite(loss):
        raise TrainingError(f"loss is {loss} at {where} (lr {lr:.2e}); lower the lr or check the data")


def environment(world: int) -> dict:
    """What a job ran on: software versions, the accelerator and how many processes shared the work."""
    import platform
    import socket

    import torch

    cuda = torch.cuda.is_available()
    try:
        import detectron2
        d2 = detectron2.__version__
    except ImportError:
        d2 = None
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "detectron2": d2,
            "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.machine()})",
            "gpus": world if cuda else 0, "processes": world, "hostname": socket.gethostname()}


def record_run(job_dir: Path, world: int, seconds: float) -> None:
    """Add this process's run (environment, wall time) to the job's `environment.json`: one entry per start, so
    that a resumed job's time adds up."""
    import datetime as dt

    path = Path(job_dir) / paths.ENVIRONMENT
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    runs.append({**environment(world), "seconds": round(seconds, 1),
                 "finished": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
    atomic_write_json(path, {"runs": runs})


class History:
    """Each step's scalars as one JSON line in the job's `history.jsonl` (rank 0); a resumed run appends, and
    readers keep the last line of a step."""

    def __init__(self, job_dir: Path, rank: int):
        self.file = open(Path(job_dir) / paths.HISTORY, "a", buffering=1) if rank == 0 else None

    def log(self, **scalars) -> None:
        if self.file is not None:
            self.file.write(json.dumps(scalars) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def read_history(job: str, folder: Path) -> list[dict]:
    """Each step's scalars a job logged, the last line of a step kept (a resumed run repeats steps)."""
    path = Path(folder) / (paths.FINETUNE_HISTORY if job == "finetune" else paths.HISTORY)
    if not path.exists():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        step = entry.get("step", entry.get("iteration"))
        if step is not None:
            by_step[step] = {**by_step.get(step, {}), **entry}
    return [by_step[k] for k in sorted(by_step)]


# The columns of each curve file (paths.CURVES), per engine: the history's key for each.
CURVE_COLUMNS = {
    "pretrain": {"train": {"step": "step", "loss": "loss", "lr": "lr"},
                 "eval": {"step": "step", "top1": "top1", "top5": "top5"}},
    "finetune": {"train": {"step": "iteration", "loss": "total_loss", "lr": "lr"}},
}


def write_curves(job: str, job_dir: Path) -> None:
    """A finished training job's history as the CSV tables of paths.CURVES (the rows that have every column), for
    `dvc plots`; the history itself stays the record."""
    history = read_history(job, job_dir)
    for kind, columns in CURVE_COLUMNS[job].items():
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for entry in history:
            if all(key in entry for key in columns.values()):
                writer.writerow([entry[key] for key in columns.values()])
        atomic_write_text(Path(job_dir) / paths.CURVES[kind], buf.getvalue())

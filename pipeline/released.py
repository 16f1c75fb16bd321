"""Released checkpoints in the DAG (config/released.yaml): fetch them through the dataset download code, check
them against the publisher's hash or the lock file, and evaluate each ImageNet classifier with its paper's test
protocol against the registry rows it corresponds to (`<paper>_released` targets).

    python -m pipeline.released fetch pvt_tiny.pth --data-root data          # download (or link) + verify
    python -m pipeline.released evaluate --settings S --weights W --metrics M  # ImageNet val top-1/top-5
    python -m pipeline.released gather --paper pvt --scale full --out results/tables/pvt_released.json

Paths: `<data_root>/weights/<paper>/<file>` (and `.verified.json`), `results/released/<dataset>/<backbone>/<file
stem>/{settings.yaml,metrics.json}`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline import paths, registry
from pipeline.data.download import DownloadError, Source, download, file_hash, verify
from pipeline.io import atomic_write_json, atomic_write_text, waiting_lock
from pipeline.logs import fail, setup_logging

CATALOGUE = registry.CONFIG_DIR / "released.yaml"
LOCK = registry.CONFIG_DIR / "released.lock"
SUFFIX = "_released"
SOURCE = "released"  # the pretraining source a released row names
# Evaluating one classifier on ImageNet-1k val (50,000 images) on one GPU; assumed: a few hundred images/s.
EVALUATE_RESOURCES = {"gpus": 1, "nodes": 1, "minutes": 30}


@dataclass(frozen=True)
class Checkpoint:
    filename: str
    paper: str
    backbone: str
    kind: str
    url: str | None
    homepage: str
    rows: tuple[str, ...]
    protocol: dict
    size: int | None = None
    sha256: str | None = None

    @property
    def stem(self) -> str:
        return self.filename.split(".")[0]


@functools.lru_cache(maxsize=None)
def catalogue(path: str = str(CATALOGUE)) -> dict[str, Checkpoint]:
    """Every released checkpoint, checked: its backbone is registered and its rows are registry rows."""
    from pipeline import model_index

    doc = registry.load_yaml(path)
    registry.validate(doc, "released.schema.yaml", Path(path))
    out = {}
    for name, entry in doc["checkpoints"].items():
        ckpt = Checkpoint(name, entry["paper"], entry["backbone"], entry["kind"], entry["url"], entry["homepage"],
                          tuple(entry["rows"]), entry["protocol"], entry.get("size"), entry.get("sha256"))
        if ckpt.backbone not in model_index.list_models():
            raise registry.ConfigError(f"{path}: {name}: backbone {ckpt.backbone!r} is not a registered model")
        for ref in ckpt.rows:
            table, row = ref.split("/")
            registry.row(ckpt.paper, table, row)  # raises ConfigError naming an unknown one
        out[name] = ckpt
    return out


def no_release() -> dict[str, str]:
    return registry.load_yaml(CATALOGUE)["no_release"]


def targets() -> dict[str, list[Checkpoint]]:
    """`<paper>_released` -> its ImageNet classifiers."""
    out: dict[str, list[Checkpoint]] = {}
    for ckpt in catalogue().values():
        if ckpt.kind == "imagenet1k":
            out.setdefault(f"{ckpt.paper}{SUFFIX}", []).append(ckpt)
    return out


def for_backbone(backbone: str) -> Checkpoint | None:
    """The released ImageNet-1k classifier of a backbone, if its authors released one."""
    return next((c for c in catalogue().values() if c.backbone == backbone and c.kind == "imagenet1k"), None)


def requested(backbone: str, pretrain_source) -> str:
    """What config `pretrain_source` (`ours`/`released`, or per backbone with a `default`) asks for a backbone."""
    if isinstance(pretrain_source, str):
        return pretrain_source
    return pretrain_source.get(backbone, pretrain_source.get("default", "ours"))


def without_release(backbones, pretrain_source) -> list[str]:
    """The backbones `pretrain_source` sends to released weights that have none (they stay on `ours`)."""
    return sorted(b for b in set(backbones) if requested(b, pretrain_source) == SOURCE and for_backbone(b) is None)


def weights_path(data_root: str, paper: str, filename: str) -> str:
    return f"{data_root}/weights/{paper}/{filename}"


def evaluate_dir(dataset: str, backbone: str, stem: str) -> str:
    return f"results/released/{dataset}/{backbone}/{stem}"


# ---- fetching, and the lock of hashes recorded on first download ----


def read_lock(path: Path = LOCK) -> dict[str, str]:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def source(ckpt: Checkpoint, override: str = "", lock: dict | None = None) -> Source:
    """Where the file comes from (the user's path or URL first) and the hash it must have."""
    url = override or ckpt.url
    if not url:
        raise DownloadError(f"{ckpt.filename}: its host needs a browser; download it from {ckpt.homepage} and set "
                            f"released_paths.{ckpt.filename} in config/config.yaml to the file")
    known = ckpt.sha256 or (lock if lock is not None else read_lock()).get(ckpt.filename)
    return Source(url=url, filename=ckpt.filename, size=ckpt.size, sha256=known, homepage=ckpt.homepage)


def fetch(ckpt: Checkpoint, data_root: str, override: str = "", lock_file: Path = LOCK, log=None,
          **download_kw) -> dict:
    """Download (or link) and verify one checkpoint; with no published or locked hash, record its SHA-256 in the
    lock file. Returns the verification record (written beside the file)."""
    dest = Path(weights_path(data_root, ckpt.paper, ckpt.filename))
    src = source(ckpt, override, read_lock(lock_file))
    download(src, dest, **download_kw)
    try:
        verify(dest, src)
    except DownloadError as e:
        origin = "published" if ckpt.sha256 else f"recorded in {lock_file}"
        raise DownloadError(f"{e} (hash {origin}); delete {dest} if the publisher replaced the file, and the entry "
                            f"in {lock_file} if you trust the new one") from None
    digest = file_hash(dest, "sha256")
    how = "published" if ckpt.sha256 else "lock"
    if src.sha256 is None:
        with waiting_lock(lock_file.with_name(lock_file.name + ".lock"), log):
            entries = {**read_lock(lock_file), ckpt.filename: digest}
            atomic_write_text(lock_file, _LOCK_HEAD + yaml.safe_dump(entries, sort_keys=True))
        how = "recorded on first download"
    record = {"file": ckpt.filename, "url": src.url, "bytes": dest.stat().st_size, "sha256": digest, "hash": how}
    atomic_write_json(str(dest) + ".verified.json", record)
    return record


_LOCK_HEAD = ("# SHA-256 of released checkpoints whose publishers list no hash, recorded on their first verified "
              "download\n# (pipeline/released.py). Commit this file: every later download is checked against it.\n")


# ---- evaluation ----


def settings_doc(ckpt: Checkpoint, scale: str) -> dict:
    """The evaluation job's settings (pipeline/settings.py writes them with the dataset): the paper's test
    protocol, with its source."""
    values = {**{k: v for k, v in ckpt.protocol.items() if k != "source"}, "batch_size": 64,
              "checkpoint": ckpt.filename}
    provenance = {k: {"from": "assumed" if ckpt.protocol["source"].startswith("assumed") else "official",
                      "ref": ckpt.protocol["source"]} for k in ckpt.protocol if k != "source"}
    provenance["batch_size"] = {"from": "engine", "ref": "evaluation batch; does not change the result"}
    provenance["checkpoint"] = {"from": "config", "ref": "config/released.yaml"}
    return {"job": "evaluate_released", "backbone": ckpt.backbone, "recipe": None, "schedule": None, "seed": 0,
            "scale": scale, "values": values, "provenance": provenance}


def evaluate(settings_file: Path, weights: Path, data: Path | None, metrics_out: Path, log) -> dict:
    """Top-1/top-5 of the released classifier on ImageNet val with its test protocol."""
    import time

    import torch
    from timm.data import create_transform
    from torch.utils.data import DataLoader

    import models
    from pipeline import engine, pretrain, settings

    doc = settings.read(settings_file)
    v = doc["values"]
    root = Path(data or doc["dataset"]["root"])
    engine.check_data(root)
    model = models.create(doc["backbone"], pretrained=str(weights)).eval()
    tf = create_transform(v["resolution"], is_training=False, interpolation=v["interpolation"],
                          crop_pct=v["crop_pct"])
    loader = DataLoader(pretrain.ImageNetFolder(root, "val", tf), batch_size=v["batch_size"])
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    metrics = pretrain.evaluate(model.to(device), loader, False, device)
    seconds = time.perf_counter() - start
    # The file's hash is in the verification record fetch_weights wrote beside it (the table reads it there).
    metrics.update({"model": doc["backbone"], "checkpoint": v["checkpoint"],
                    "params": sum(p.numel() for p in model.parameters()), "eval_seconds": round(seconds, 1)})
    atomic_write_json(metrics_out, metrics)
    engine.record_run(Path(metrics_out).parent, 1, seconds)
    log.info("%s: top1 %.2f top5 %.2f on %d val images -> %s", v["checkpoint"], metrics["top1"], metrics["top5"],
             metrics["val_images"], metrics_out)
    return metrics


# ---- the table of one paper's releases ----


def _row(ckpt: Checkpoint, ref: str, dataset: str, weights_root: str) -> dict:
    from pipeline.gather import settings_hash

    table_id, row_id = ref.split("/")
    paper_row = registry.row(ckpt.paper, table_id, row_id)
    where = evaluate_dir(dataset, ckpt.backbone, ckpt.stem)
    measured = json.loads(Path(where, "metrics.json").read_text())
    numbers = {k: v for k, v in measured.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    values = {name: _metric(name, numbers) for name in paper_row["metrics"]}
    verified = Path(weights_path(weights_root, ckpt.paper, ckpt.filename) + ".verified.json")
    record = json.loads(verified.read_text()) if verified.exists() else {}
    settings_file = paths.settings(where)
    return {"id": row_id, "row": paper_row["row"], "kind": "pretrain", "backbone": ckpt.backbone,
            "pretrain": SOURCE, "recipe": None, "schedule": None, "baseline": None,
            "paper": paper_row["metrics"], "measured": values, "per_seed": {"0": values},
            "all_measured": {"0": numbers}, "settings": {"0": {"evaluate": settings_file}},
            "settings_sha256": settings_hash([settings_file]), "evidence": paper_row["evidence"],
            "source": paper_row["source"],
            "paper_cost": {k: paper_row[k] for k in ("params_m", "flops_g", "flops_convention", "resolution")},
            "plan": {"evaluate": EVALUATE_RESOURCES},
            "released": {"file": ckpt.filename, "url": record.get("url") or ckpt.url,
                         "sha256": record.get("sha256"), "hash": record.get("hash")}}


def _metric(name: str, measured: dict):
    if name in measured:
        return measured[name]
    if name == "top1_err" and "top1" in measured:
        return 100.0 - measured["top1"]
    return None


def gather(paper: str, dataset: str, scale: str, weights_root: str) -> dict:
    from pipeline.gather import code_version

    import datetime as dt

    found = targets()[f"{paper}{SUFFIX}"]
    doc = registry.paper(paper)
    return {"target": f"{paper}{SUFFIX}", "paper": paper, "table": "released", "paper_name": doc["name"],
            "title": "released ImageNet checkpoints", "arxiv": doc.get("arxiv"),
            "number": {"value": None, "verified": True, "note": None}, "scale": scale, "seeds": [0],
            "code_version": code_version(),
            "gathered": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "rows": [_row(c, ref, dataset, weights_root) for c in found for ref in c.rows], "not_run": []}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.released", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("fetch")
    p.add_argument("file")
    p.add_argument("--data-root", default="data")
    p.add_argument("--source", default="", help="a local path or URL in place of the catalogue's url")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--retries", type=int, default=5)
    p = sub.add_parser("evaluate")
    p.add_argument("--settings", required=True, type=Path)
    p.add_argument("--weights", required=True, type=Path)
    p.add_argument("--data", type=Path)
    p.add_argument("--metrics", required=True, type=Path)
    p = sub.add_parser("gather")
    p.add_argument("--paper", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--scale", default="full")
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", required=True, type=Path)
    for p in sub.choices.values():
        p.add_argument("--log-file", help="also write the log to this file")
    args = parser.parse_args(argv)
    log = setup_logging(args.log_file, "released")
    try:
        return _run(args, log)
    except (DownloadError, registry.ConfigError, KeyError, OSError) as e:
        return fail(log, str(e))


def _run(args, log) -> int:
    from models import CheckpointError

    from pipeline.engine import TrainingError

    if args.step == "fetch":
        if args.file not in catalogue():
            raise registry.ConfigError(f"{CATALOGUE}: no released checkpoint {args.file!r}; files: "
                                       f"{', '.join(catalogue())}")
        record = fetch(catalogue()[args.file], args.data_root, args.source, log=log, timeout=args.timeout,
                       retries=args.retries)
        log.info("%s: sha256 %s (%s)", args.file, record["sha256"], record["hash"])
    elif args.step == "evaluate":
        try:
            evaluate(args.settings, args.weights, args.data, args.metrics, log)
        except (CheckpointError, TrainingError) as e:
            return fail(log, str(e))
    else:
        atomic_write_json(args.out, gather(args.paper, args.dataset, args.scale, args.data_root))
        log.info("%s%s -> %s", args.paper, SUFFIX, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

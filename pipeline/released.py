"""Released checkpoints in the DAG (config/released.yaml): fetch them through the dataset download code, check
them against the publisher's hash or the lock file, and evaluate each ImageNet classifier with its paper's test
protocol, and each whole segmentor (converted key for key) with its recipe's ADE20K test, against the registry
rows they correspond to (`<paper>_released` targets). Detectors and dense backbones are listed, not evaluated.

    python -m pipeline.released fetch pvt_tiny.pth --data-root data          # download (or link) + verify
    python -m pipeline.released convert --settings S --weights W --output O  # mmseg segmentor -> this layout
    python -m pipeline.released evaluate --settings S --weights W --metrics M  # top-1/top-5, or mIoU
    python -m pipeline.released gather --paper pvt --scale full --out results/tables/pvt_released.json

Paths: `<data_root>/weights/<paper>/<file>` (and `.verified.json`), `results/released/<dataset>/<backbone>/<file
stem>/{settings.yaml,metrics.json}`, and a segmentor's converted model in `model/{settings.yaml,model_final.pth}`
below that.
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
from pipeline.io import DiskFull, atomic_write_json, atomic_write_text, waiting_lock
from pipeline.logs import fail, setup_logging

CATALOGUE = registry.CONFIG_DIR / "released.yaml"
LOCK = registry.CONFIG_DIR / "released.lock"
SUFFIX = "_released"
SOURCE = "released"  # the pretraining source a released row names
# What each evaluated kind is measured on (a prepared dataset's layout).
EVALUATED = {"imagenet1k": "imagenet", "segmentor": "ade20k"}
# Evaluating one classifier on ImageNet-1k val (50,000 images) or one segmentor on ADE20K val (2,000 images,
# sliding windows, and the multi-scale flip test where the recipe has one) on one GPU; assumed.
EVALUATE_RESOURCES = {"imagenet1k": {"gpus": 1, "nodes": 1, "minutes": 30},
                      "segmentor": {"gpus": 1, "nodes": 1, "minutes": 60}}
MODEL_DIR = "model"  # a segmentor's converted model, below its evaluation directory
TITLE = "released checkpoints"  # a `<paper>_released` table's title


@dataclass(frozen=True)
class Checkpoint:
    filename: str
    paper: str
    backbone: str
    kind: str
    url: str | None
    homepage: str
    rows: tuple[str, ...]
    protocol: dict | None = None
    size: int | None = None
    sha256: str | None = None
    not_evaluated: str | None = None

    @property
    def stem(self) -> str:
        return self.filename.split(".")[0]

    @property
    def evaluated(self) -> bool:
        return self.kind in EVALUATED


@functools.lru_cache(maxsize=None)
def catalogue(path: str = str(CATALOGUE)) -> dict[str, Checkpoint]:
    """Every released checkpoint, checked: its backbone is registered and its rows are registry rows."""
    from pipeline import model_index

    doc = registry.load_yaml(path)
    registry.validate(doc, "released.schema.yaml", Path(path))
    out = {}
    for name, entry in doc["checkpoints"].items():
        ckpt = Checkpoint(name, entry["paper"], entry["backbone"], entry["kind"], entry["url"], entry["homepage"],
                          tuple(entry["rows"]), entry.get("protocol"), entry.get("size"), entry.get("sha256"),
                          entry.get("not_evaluated"))
        if ckpt.backbone not in model_index.list_models():
            raise registry.ConfigError(f"{path}: {name}: backbone {ckpt.backbone!r} is not a registered model")
        for ref in ckpt.rows:
            table, row = ref.split("/")
            registry.row(ckpt.paper, table, row)  # raises ConfigError naming an unknown one
        if ckpt.kind == "segmentor" and recipe_run(ckpt) is None:
            raise registry.ConfigError(f"{path}: {name}: none of its rows is run by a registry experiment, so no "
                                       "recipe gives its test protocol; add a row that is")
        out[name] = ckpt
    return out


def recipe_run(ckpt: Checkpoint):
    """The registry run of the first of a checkpoint's rows that an experiment runs: for a segmentor, the model it
    was trained as (recipe, schedule) and the ADE20K test it is evaluated with."""
    from pipeline import targets

    runs = {(r.table, r.row): r for e in targets.experiments().values() for r in e.runs}
    return next((runs[tuple(ref.split("/"))] for ref in ckpt.rows if tuple(ref.split("/")) in runs), None)


def no_release() -> dict[str, str]:
    return registry.load_yaml(CATALOGUE)["no_release"]


def targets() -> dict[str, list[Checkpoint]]:
    """`<paper>_released` -> the checkpoints it evaluates: ImageNet classifiers and whole segmentors."""
    out: dict[str, list[Checkpoint]] = {}
    for ckpt in catalogue().values():
        if ckpt.evaluated:
            out.setdefault(f"{ckpt.paper}{SUFFIX}", []).append(ckpt)
    return out


def listed_only(paper: str) -> list[Checkpoint]:
    """A paper's released files that are not evaluated (detectors, dense backbones), with the reason."""
    return [c for c in catalogue().values() if c.paper == paper and not c.evaluated]


def dataset_of(ckpt: Checkpoint, scale: str, datasets: dict) -> str:
    """The prepared dataset an evaluated checkpoint is measured on at this scale."""
    from pipeline import jobs

    return jobs.dataset(EVALUATED[ckpt.kind], scale, datasets)


def by_stem(backbone: str, stem: str) -> Checkpoint:
    return next(c for c in catalogue().values() if c.backbone == backbone and c.stem == stem)


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


def model_dir(dataset: str, backbone: str, stem: str) -> str:
    return f"{evaluate_dir(dataset, backbone, stem)}/{MODEL_DIR}"


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


def settings_doc(ckpt: Checkpoint, scale: str, profile: str = "", profiles: dict | None = None,
                 job: str = "evaluate") -> dict:
    """An evaluation job's settings (pipeline/settings.py writes them with the dataset): a classifier's paper
    test protocol with its source; a segmentor's recipe, resolved as a fine-tuning run's would be, for its
    evaluation (`job` evaluate) or for the model it is converted into (`job` finetune)."""
    if ckpt.kind == "segmentor":
        from pipeline import settings

        run = recipe_run(ckpt)
        # The model is built as the authors trained it at every scale (nothing trains); its test shrinks at smoke.
        scale = scale if job == "evaluate" else "full"
        doc = settings.resolve(job, ckpt.backbone, run.recipe, 0, scale, profile, profiles or {}, run.schedule)
        doc["values"]["checkpoint"] = ckpt.filename
        doc["provenance"]["checkpoint"] = {"from": "config", "ref": "config/released.yaml"}
        return doc
    values = {**{k: v for k, v in ckpt.protocol.items() if k != "source"}, "batch_size": 64,
              "checkpoint": ckpt.filename}
    provenance = {k: {"from": "assumed" if ckpt.protocol["source"].startswith("assumed") else "official",
                      "ref": ckpt.protocol["source"]} for k in ckpt.protocol if k != "source"}
    provenance["batch_size"] = {"from": "engine", "ref": "evaluation batch; does not change the result"}
    provenance["checkpoint"] = {"from": "config", "ref": "config/released.yaml"}
    return {"job": "evaluate_released", "backbone": ckpt.backbone, "recipe": None, "schedule": None, "seed": 0,
            "scale": scale, "values": values, "provenance": provenance}


def convert(settings_file: Path, weights: Path, output: Path, log) -> None:
    """A released mmseg segmentor in this pipeline's fine-tuned-model layout (what `evaluate` reads): the model
    its recipe builds, loaded key for key (models/dense.py load_mmseg)."""
    from dataclasses import asdict

    from models.dense import load_mmseg
    from pipeline import settings
    from pipeline.detection import build_model
    from pipeline.io import atomic_torch_save

    cfg, _ = settings.engine_config(settings_file, "finetune")
    model = build_model(cfg, None, 224)  # the releases' backbones were trained at 224 (papers' ImageNet recipes)
    load_mmseg(model, str(weights))
    atomic_torch_save({"model": model.state_dict(), "config": {**asdict(cfg), "world_size": 1}, "iters": None,
                       "pretrain_img_size": 224, "released": Path(weights).name}, output)
    log.info("%s: converted into %s (%s) -> %s", Path(weights).name, cfg.framework, cfg.backbone, output)


def evaluate(settings_file: Path, weights: Path, data: Path | None, metrics_out: Path, log,
             log_file: str | None = None) -> dict:
    """Top-1/top-5 of a released classifier on ImageNet val with its test protocol; a converted segmentor's
    ADE20K metrics through the evaluation engine (pipeline/evaluate.py)."""
    import time

    from pipeline import settings

    doc = settings.read(settings_file)
    root = Path(data or doc["dataset"]["root"])
    if doc["job"] == "evaluate":
        from pipeline import evaluate as dense

        cfg, _ = settings.engine_config(settings_file, "evaluate")
        return dense.evaluate(cfg, str(weights), str(root), str(metrics_out), str(Path(metrics_out).parent / "eval"),
                              log_file)

    import torch
    from timm.data import create_transform
    from torch.utils.data import DataLoader

    import models
    from pipeline import engine, pretrain

    v = doc["values"]
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
    from pipeline.gather import measured_value, settings_hash

    table_id, row_id = ref.split("/")
    paper_row = registry.row(ckpt.paper, table_id, row_id)
    where = evaluate_dir(dataset, ckpt.backbone, ckpt.stem)
    measured = json.loads(Path(where, "metrics.json").read_text())
    numbers = {k: v for k, v in measured.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    values = {name: measured_value(name, numbers, None) for name in paper_row["metrics"]}
    verified = Path(weights_path(weights_root, ckpt.paper, ckpt.filename) + ".verified.json")
    record = json.loads(verified.read_text()) if verified.exists() else {}
    files = {"evaluate": paths.settings(where)}
    run = recipe_run(ckpt) if ckpt.kind == "segmentor" else None
    built_as = {"model_settings": paths.settings(model_dir(dataset, ckpt.backbone, ckpt.stem))} if run else {}
    return {"id": row_id, "row": paper_row["row"], "kind": "finetune" if run else "pretrain",
            "backbone": ckpt.backbone, "pretrain": SOURCE, "recipe": run and run.recipe,
            "schedule": run and run.schedule, "baseline": None,
            "paper": paper_row["metrics"], "measured": values, "per_seed": {"0": values},
            "all_measured": {"0": numbers}, "settings": {"0": files},
            "settings_sha256": settings_hash(list(files.values())), "evidence": paper_row["evidence"],
            "source": paper_row["source"],
            "paper_cost": {k: paper_row[k] for k in ("params_m", "flops_g", "flops_convention", "resolution")},
            "plan": {"evaluate": EVALUATE_RESOURCES[ckpt.kind]},
            "released": {"file": ckpt.filename, "kind": ckpt.kind, "url": record.get("url") or ckpt.url,
                         "sha256": record.get("sha256"), "hash": record.get("hash"), **built_as}}


def gather(paper: str, scale: str, weights_root: str, datasets: dict) -> dict:
    """The table JSON of a paper's releases: a row per (evaluated checkpoint, registry row it corresponds to),
    and the files listed but not evaluated, with the reason."""
    from pipeline.gather import code_version

    import datetime as dt

    found = targets()[f"{paper}{SUFFIX}"]
    doc = registry.paper(paper)
    rows = [_row(c, ref, dataset_of(c, scale, datasets), weights_root) for c in found for ref in c.rows]
    not_run = [{"id": c.filename, "row": f"{c.kind} for {', '.join(c.rows)}", "why": c.not_evaluated}
               for c in listed_only(paper)]
    return {"target": f"{paper}{SUFFIX}", "paper": paper, "table": "released", "paper_name": doc["name"],
            "title": TITLE, "arxiv": doc.get("arxiv"),
            "number": {"value": None, "verified": True, "note": None}, "scale": scale, "seeds": [0],
            "code_version": code_version(),
            "gathered": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "rows": rows, "not_run": not_run}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.released", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("fetch")
    p.add_argument("file")
    p.add_argument("--data-root", default="data")
    p.add_argument("--source", default="", help="a local path or URL in place of the catalogue's url")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--retries", type=int, default=5)
    p = sub.add_parser("convert")
    p.add_argument("--settings", required=True, type=Path)
    p.add_argument("--weights", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path)
    p = sub.add_parser("evaluate")
    p.add_argument("--settings", required=True, type=Path)
    p.add_argument("--weights", required=True, type=Path)
    p.add_argument("--data", type=Path)
    p.add_argument("--metrics", required=True, type=Path)
    p = sub.add_parser("gather")
    p.add_argument("--paper", required=True)
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
    elif args.step in ("convert", "evaluate"):
        try:
            if args.step == "convert":
                convert(args.settings, args.weights, args.output, log)
            else:
                evaluate(args.settings, args.weights, args.data, args.metrics, log, args.log_file)
        except (CheckpointError, TrainingError, DiskFull) as e:
            return fail(log, str(e))
    else:
        from pipeline.data import sources
        from pipeline.gather import write_table

        datasets = sources.datasets(args.data_root)
        write_table(args.out, gather(args.paper, args.scale, args.data_root, datasets))
        log.info("%s%s -> %s", args.paper, SUFFIX, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

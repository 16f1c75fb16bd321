"""Gather one paper table: every row's measured metrics (keyed like the registry), beside the paper's numbers,
with the settings files of the jobs that measured them (and a hash over their values) and the code version.

    python -m pipeline.gather --target pvt_table5 --scale smoke --seeds 0 --data-root data \
        --out results/tables/pvt_table5.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

from pipeline import jobs, paths, registry, settings, stats, targets
from pipeline.data import sources
from pipeline.io import atomic_write_json
from pipeline.logs import setup_logging

ROOT = registry.ROOT


def code_version() -> str:
    """The git commit the results come from, `+dirty` when the work tree has changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + ("+dirty" if dirty else "")


def settings_hash(files: list[str]) -> str:
    """SHA-256 over the values the run's jobs ran with, as their settings files record them."""
    values = {str(f): settings.read(f)["values"] for f in files}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def _numbers(path: str) -> dict:
    doc = json.loads(Path(path).read_text())
    return {k: v for k, v in doc.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def measured_value(name: str, run_metrics: dict, baseline_metrics: dict | None):
    """A registry metric from measured ones: the same key; `top1_err` = 100 - top1; `X_delta[...]` = X of the
    run minus X of its baseline; `mIoU_ss` = the single-scale mIoU (as `mIoU_code`/`mIoU_paper`, PVT's README
    columns of one single-scale number). None when the pipeline does not measure it."""
    if name in run_metrics:
        return run_metrics[name]
    by_lower = {k.lower(): v for k, v in run_metrics.items()}
    if "_delta" not in name and name.lower() in by_lower:  # the registry keeps some sources' spelling (box_ap)
        return by_lower[name.lower()]
    if name == "top1_err" and "top1" in run_metrics:
        return 100.0 - run_metrics["top1"]
    if name in ("mIoU_ss", "mIoU_code", "mIoU_paper"):
        return run_metrics.get("mIoU")
    if "_delta" in name and baseline_metrics is not None:
        base = name.split("_delta")[0]
        mine = measured_value(base, run_metrics, None)
        theirs = measured_value(base, baseline_metrics, None)
        if mine is not None and theirs is not None:
            return mine - theirs
    return None


def _metrics_of(found: list[jobs.Job]) -> dict:
    out = {}
    for job in found:
        if job.metrics:
            out.update(_numbers(job.metrics))
    return out


def train_rate(job: jobs.Job) -> float | None:
    """A pretraining job's images per second: its steps x batch over the wall time its runs recorded
    (environment.json, resumed runs added up; the final evaluation included)."""
    if job.rule != "pretrain":
        return None
    metrics = Path(job.dir) / paths.PRETRAIN_METRICS
    runs = Path(job.dir) / paths.ENVIRONMENT
    if not (metrics.exists() and runs.exists() and Path(job.settings).exists()):
        return None
    seconds = sum(r["seconds"] for r in json.loads(runs.read_text())["runs"])
    batch = settings.read(job.settings)["values"]["batch_size"]
    steps = json.loads(metrics.read_text()).get("steps")
    return steps * batch / seconds if steps and seconds else None


def _backbone_cost(backbone: str) -> dict:
    """The backbone's classifier at 224: what the project's tables compare families by, whatever the task."""
    from pipeline.report import backbone_cost

    params, macs = backbone_cost(backbone, 224)
    return {"params_m": params, "macs_g": macs, "resolution": 224}


def _summaries(per_seed: dict, names) -> dict:
    """Each metric's mean, std and 95 % interval over the seeds that measured it (pipeline/stats.py)."""
    out = {}
    for name in names:
        values = [v[name] for v in per_seed.values() if v[name] is not None]
        if values:
            out[name] = stats.summarize(values).as_dict()
    return out


def comparison(rows: list[dict]) -> dict:
    """Per metric, over the rows that measured it with two or more seeds: each row's range of places and every
    pair's difference with its interval (pipeline/stats.py); a ranking is claimed only where they allow."""
    out = {}
    names = dict.fromkeys(name for row in rows for name in row["measured"])
    for name in names:
        values = {row["id"]: [v[name] for v in row["per_seed"].values() if v.get(name) is not None] for row in rows}
        values = {k: v for k, v in values.items() if len(v) >= 2}
        if len(values) < 2:
            continue
        higher = stats.higher_is_better(name)
        out[name] = {"higher_is_better": higher, "confidence": stats.CONFIDENCE,
                     "interval": stats.METHOD,
                     "ranks": {k: list(v) for k, v in stats.ranks(values, higher).items()},
                     "pairwise": stats.pairwise(values, higher)}
    return out


def _row(run: targets.Run, paper_row: dict, scale: str, datasets: dict, seeds: list[int], source="ours") -> dict:
    per_seed, everything, files, rates = {}, {}, {}, []
    for seed in seeds:
        found = jobs.run_jobs(run, scale, datasets, seed, source)
        rates += [r for r in [train_rate(found[0])] if r]
        everything[seed] = _metrics_of(found)
        base = _metrics_of(jobs.run_jobs(run.with_backbone(run.baseline), scale, datasets, seed)) \
            if run.baseline else None
        per_seed[seed] = {name: measured_value(name, everything[seed], base) for name in paper_row["metrics"]}
        files[seed] = {job.rule: job.settings for job in found if job.settings}  # job -> the file it ran with
    measured = {}
    for name in paper_row["metrics"]:
        values = [per_seed[s][name] for s in seeds if per_seed[s][name] is not None]
        measured[name] = statistics.fmean(values) if values else None
    return {
        "id": run.row, "row": paper_row["row"], "kind": run.kind, "backbone": run.backbone,
        "pretrain": jobs.weights_source(run.backbone, run.pretrain, source) if run.kind == "finetune" else run.pretrain,
        "recipe": run.recipe, "schedule": run.schedule, "baseline": run.baseline,
        "paper": paper_row["metrics"], "measured": measured,
        "paper_cost": {k: paper_row.get(k) for k in ("params_m", "flops_g", "flops_convention", "resolution")},
        # What the plan asks of a cluster for each job of the row (one seed): GPUs per node, nodes, minutes.
        "plan": {job.rule: job.resources(scale) for job in jobs.run_jobs(run, scale, datasets, seeds[0], source)},
        "per_seed": {str(s): per_seed[s] for s in seeds},
        "summary": _summaries(per_seed, paper_row["metrics"]),
        # The pretraining's own throughput (images/s), averaged over seeds; None for imported weights.
        "pretrain_images_per_s": statistics.fmean(rates) if rates else None,
        "backbone_cost": _backbone_cost(run.backbone) if paper_row["evidence"] == "project" else None,
        "all_measured": {str(s): everything[s] for s in seeds},
        "settings": {str(s): files[s] for s in seeds},
        "settings_sha256": settings_hash([f for s in seeds for f in files[s].values()]),
        "evidence": paper_row["evidence"], "source": paper_row["source"],
    }


def gather(target: str, scale: str, seeds: list[int], data_root: str, rows: list[str] | None = None,
           source="ours") -> dict:
    """The table's measured rows (only `rows` when given: the demo gathers its one row)."""
    exp = targets.experiments()[target]
    datasets = sources.datasets(data_root)
    paper_rows = {r["id"]: r for r in registry.table(exp.paper, exp.table)["rows"]}
    runs = [run for run in exp.runs if rows is None or run.row in rows]
    measured = [_row(run, paper_rows[run.row], scale, datasets, seeds, source) for run in runs]
    return {
        "target": target, "paper": exp.paper, "table": exp.table, "title": exp.title,
        "paper_name": registry.paper(exp.paper)["name"], "arxiv": registry.paper(exp.paper).get("arxiv"),
        "number": {"value": exp.number, "verified": exp.verified, "note": exp.number_note},
        "scale": scale, "seeds": seeds, "code_version": code_version(),
        "gathered": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pretrain_source": source,
        "rows": measured,
        "comparison": comparison(measured) if len(seeds) > 1 else {},
        "not_run": [] if rows else [{"id": rid, "row": paper_rows[rid]["row"], "why": why}
                                    for rid, why in exp.skipped],
    }


def write_table(out: str, doc: dict) -> None:
    """The table JSON, and beside it each row's measured values by row id (paths.table_metrics): what `dvc
    metrics show` lists and `dvc metrics diff` compares."""
    atomic_write_json(out, doc)
    atomic_write_json(paths.table_metrics(out), {row["id"]: row["measured"] for row in doc["rows"]})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="gather a paper table's measured metrics into one JSON")
    parser.add_argument("--target", required=True)
    parser.add_argument("--scale", default="full", choices=jobs.SCALES)
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", help="comma-separated row ids: gather only these (the demo's row)")
    parser.add_argument("--name", help="the report's name when it is not the target's (the demo)")
    parser.add_argument("--pretrain-source", default='"ours"', help="config `pretrain_source`, as JSON")
    parser.add_argument("--log-file", help="also write the log to this file")
    args = parser.parse_args(argv)
    log = setup_logging(args.log_file, "gather")
    try:
        doc = gather(args.target, args.scale, [int(s) for s in args.seeds.split(",")], args.data_root,
                     args.rows.split(",") if args.rows else None, json.loads(args.pretrain_source))
        if args.name:
            doc["report"] = args.name
    except (registry.ConfigError, FileNotFoundError, KeyError) as e:
        log.error("%s", e)
        return 1
    write_table(args.out, doc)
    for row in doc["rows"]:
        shown = ", ".join(f"{k} {v:.2f} (paper {row['paper'][k]})" for k, v in row["measured"].items()
                          if v is not None)
        log.info("%s: %s", row["id"], shown or "no comparable metric")
    log.info("%s: %d rows measured, %d not run -> %s", args.target, len(doc["rows"]), len(doc["not_run"]), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reports: every reproduced number beside the paper's, with Δ, a verdict against a stated band, the run's
deviations from the paper's recipe and each number's provenance, as Markdown and self-contained HTML with plots,
plus an index of every table.

    python -m pipeline report --table results/tables/pvt_table4.json    # reports/pvt_table4.{md,html}
    python -m pipeline report --all                                     # every gathered table, and the index

A report reads only what the jobs left: the table JSON (pipeline/gather.py), each job's settings file,
`environment.json` (what it ran on, for how long), its history (`history.jsonl`, detectron2's
`state/metrics.json`) and, under SLURM, `slurm/accounting.json`. Nothing is run.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import model_index, paths, recipes, registry, released, settings, targets
from pipeline.io import waiting_lock
from pipeline.jobs import SCALES
from pipeline.logs import fail, setup_logging
from pipeline.render import number

REPORT_CONFIG = registry.CONFIG_DIR / "report.yaml"


@functools.lru_cache(maxsize=None)
def report_config(path: str = str(REPORT_CONFIG)) -> dict:
    doc = registry.load_yaml(path)
    registry.validate(doc, "report.schema.yaml", Path(path))
    for kind in doc["kinds"]:
        if kind["band"] not in doc["bands"]:
            raise registry.ConfigError(f"{path}: kinds: pattern {kind['pattern']!r} names band {kind['band']!r}; "
                                       f"bands: {', '.join(doc['bands'])}")
    return doc


@dataclass(frozen=True)
class Band:
    kind: str
    width: float
    source: str


def band(metric: str, target: str, config: dict | None = None) -> Band | None:
    """The tolerance band of a metric in a table (its kind's band, times the table's `widen`); None for metrics
    without one (throughput, memory, counts)."""
    config = config or report_config()
    for kind in config["kinds"]:
        if re.search(kind["pattern"], metric):
            b = config["bands"][kind["band"]]
            return Band(kind["band"], b["band"] * config["widen"].get(target, 1.0), b["source"])
    return None


@dataclass
class Judgement:
    metric: str
    paper: float | None
    values: list[float]  # one per seed that measured it
    band: Band | None
    verdict: str
    why: str = ""

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper


def judge(metric: str, paper: float | None, values: list[float], b: Band | None, scale: str,
          unmeasured_why: str = "") -> Judgement:
    """The verdict on one metric of one row: the mean over seeds against the paper's value and the band."""
    if not values:
        return Judgement(metric, paper, [], b, "not measured", unmeasured_why)
    if paper is None:
        return Judgement(metric, None, values, b, "paper value not available", "the registry holds no value")
    if scale == "smoke":
        return Judgement(metric, paper, values, b, "smoke", "smoke scale: a check that the pipeline runs")
    j = Judgement(metric, paper, values, b, "no band", "a cost metric: Δ only")
    if b is not None:
        j.verdict = "reproduced" if abs(j.delta) <= b.width else ("below" if j.delta < 0 else "above")
        j.why = f"band ±{b.width:g} ({b.kind})"
    return j


def _unmeasured_why(metric: str, row: dict) -> str:
    measured_any = any(row["all_measured"].get(s) for s in row["all_measured"])
    if not measured_any:
        return "no run has finished yet"
    return f"the pipeline does not measure `{metric}` for this task"


def judge_row(row: dict, target: str, scale: str) -> list[Judgement]:
    out = []
    for metric, paper in row["paper"].items():
        values = [v[metric] for v in row["per_seed"].values() if v.get(metric) is not None]
        out.append(judge(metric, paper, values, band(metric, target), scale, _unmeasured_why(metric, row)))
    return out


# ---- what each job left: settings, environment, history, accounting ----


def _job_dirs(row: dict) -> dict[str, dict[str, Path]]:
    """seed -> job (pretrain, finetune, evaluate) -> its folder, from the settings files the row ran with."""
    return {seed: {job: Path(f).parent for job, f in files.items()} for seed, files in row["settings"].items()}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def deviations(row: dict, scale: str) -> list[str]:
    """How the row's runs differ from the paper's recipe, from their resolved settings and what they ran on."""
    out = [_pretraining_source(row, scale)] + own_recipe_differences(row)
    first = next(iter(_job_dirs(row).values()), {})
    for job, folder in first.items():
        doc = _settings(folder)
        if doc is None:
            continue
        values = doc["values"]
        for key, was in (doc.get("smoke") or {}).get("replaced", {}).items():
            ref = doc["provenance"].get(key, {}).get("ref", "")
            why = f": {ref.split(': ', 1)[1]}" if ": " in ref else ""
            out.append(f"{job}: `{key}` {_short(was)} → {_short(values.get(key))} (smoke profile "
                       f"`{doc['smoke']['profile']}`{why})")
        for key, prov in doc["provenance"].items():
            if prov.get("from") == "assumed":
                out.append(f"{job}: `{key}` = {_short(values.get(key))} is assumed ({prov.get('ref')})")
        ran = (_read_json(folder / paths.ENVIRONMENT) or {}).get("runs") or []
        if ran and values.get("gpus") and ran[-1]["gpus"] != values["gpus"] * values.get("nodes", 1):
            out.append(f"{job}: ran on {ran[-1]['processes']} process(es) on {ran[-1]['device']}, the recipe on "
                       f"{values['gpus'] * values.get('nodes', 1)} GPUs (batch {values.get('batch_size')} in total "
                       "either way)")
    return out


# Recipe keys that say where and how long a job runs, not how it trains.
RESOURCE_KEYS = ("gpus", "nodes", "hours", "lr_at_batch", "schedule", "pretrain")


def _differences(mine: dict, theirs: dict, job: str, their_name: str) -> list[str]:
    return [f"{job}: `{k}` {_short(mine.get(k))} here, {_short(theirs.get(k))} in its paper's `{their_name}` recipe"
            for k in sorted(set(mine) | set(theirs)) if k not in RESOURCE_KEYS and mine.get(k) != theirs.get(k)]


def own_recipe_differences(row: dict) -> list[str]:
    """A project-table row: every value in which its recipes differ from its own paper's (the family's
    pretraining recipe, and its paper's recipe for the same detector or segmentor)."""
    if row.get("evidence") != "project":
        return []
    backbone = row["backbone"]
    family = model_index.family(backbone)
    own, mine = targets.default_pretrain(backbone), row["pretrain"]
    out = []
    if own == targets.SUPPLIED:
        out.append(f"pretrain: its paper ({family}) has no ImageNet recipe of its own to compare with")
    elif mine in recipes.load("pretrain") and mine != own:
        out += _differences(recipes.pretrain(mine, backbone), recipes.pretrain(own, backbone), "pretrain", own)
    if row["kind"] != "finetune":
        return out
    mine = recipes.finetune(row["recipe"], backbone, row["schedule"])
    theirs = [name for name, recipe in recipes.load("finetune").items() if name.startswith(f"{family}_")
              and recipe["fields"]["framework"]["value"] == mine["framework"]]  # one read of the recipes file
    if not theirs:
        return out + [f"finetune: its paper ({family}) has no {mine['framework']} recipe to compare with"]
    schedules = recipes.schedules(theirs[0])
    schedule = row["schedule"] if row["schedule"] in schedules else next(iter(schedules))
    return out + _differences(mine, recipes.finetune(theirs[0], backbone, schedule), "finetune", theirs[0])


def _pretraining_source(row: dict, scale: str) -> str:
    if row.get("released"):
        r = row["released"]
        built = f", built as [{r['model_settings']}](../{r['model_settings']})" if r.get("model_settings") else ""
        return (f"the authors' released checkpoint `{r['file']}` ({r['url']}), evaluated, not trained here{built}; "
                f"sha256 `{(r.get('sha256') or 'unknown')[:16]}`, hash {r.get('hash') or 'not checked'}")
    if row["kind"] == "pretrain":
        return f"ImageNet pretraining with this pipeline's `{row['pretrain']}` recipe"
    if row["pretrain"] == released.SOURCE:
        ckpt = released.for_backbone(row["backbone"])
        return (f"backbone weights: the authors' released ImageNet checkpoint `{ckpt.filename if ckpt else '?'}` "
                "(config `pretrain_source: released`), converted; no pretraining here")
    if row["pretrain"] == targets.SUPPLIED and scale == "smoke":
        return ("backbone weights: a seeded random initialisation stands in at smoke scale for the ImageNet weights "
                "the user supplies (config `pretrained_weights`)")
    if row["pretrain"] == targets.SUPPLIED:
        return "backbone weights: supplied by the user (config `pretrained_weights`), not pretrained here"
    where = "shrunk to smoke scale on the embedded set" if scale == "smoke" else "on ImageNet-1k"
    return f"backbone weights: this pipeline's `{row['pretrain']}` pretraining, {where}"


def _settings(folder: Path) -> dict | None:
    path = Path(paths.settings(str(folder)))
    return settings.read(path) if path.exists() else None


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Usage:
    """Wall time and GPU-hours of a job: measured by the job, from SLURM's accounting, and the plan's limit."""

    job: str
    seconds: float | None = None
    gpu_hours: float | None = None
    sacct_gpu_hours: float | None = None
    plan_gpu_hours: float | None = None
    environment: dict = field(default_factory=dict)


def usage(row: dict) -> list[Usage]:
    out = []
    for seed, jobs in _job_dirs(row).items():
        for job, folder in jobs.items():
            u = Usage(f"{job} (seed {seed})")
            runs = (_read_json(folder / paths.ENVIRONMENT) or {}).get("runs") or []
            if runs:
                u.seconds = sum(r["seconds"] for r in runs)
                u.gpu_hours = sum(r["seconds"] * r["gpus"] for r in runs) / 3600
                u.environment = runs[-1]
            u.sacct_gpu_hours = _sacct_gpu_hours(folder / "slurm" / "accounting.json")
            plan = row.get("plan", {}).get(job)
            if plan:
                u.plan_gpu_hours = plan["gpus"] * plan["nodes"] * plan["minutes"] / 60
            out.append(u)
    return out


def _sacct_gpu_hours(path: Path) -> float | None:
    doc = _read_json(path)
    if not doc:
        return None
    total = 0.0
    for entry in doc["sacct"]:
        gpus = re.search(r"gres/gpu=(\d+)", entry.get("AllocTRES", ""))
        total += int(entry.get("ElapsedRaw") or 0) * (int(gpus.group(1)) if gpus else 0) / 3600
    return total


def provenance(row: dict, table: dict) -> list[str]:
    out = [f"paper value: {row['source']} (evidence `{row['evidence']}`)",
           f"code: {table['code_version']}", f"settings sha256 over the row's jobs: `{row['settings_sha256'][:16]}`"]
    for seed, jobs in _job_dirs(row).items():
        for job, folder in jobs.items():
            doc = _settings(folder)
            data = (doc or {}).get("dataset") or {}
            index = (data.get("index_sha256") or "not prepared")[:16]
            out.append(f"{job} seed {seed}: settings [{paths.settings(str(folder))}]; data `{data.get('name')}` "
                       f"manifest index `{index}`")
    return out


# ---- parameters and MACs, in the papers' convention ----


@functools.lru_cache(maxsize=None)
def backbone_cost(backbone: str, resolution: int | None) -> tuple[float, float | None]:
    """(parameters in millions, MACs in G at `resolution`) of the classifier as registered, counted by fvcore
    (one multiply-add = one "FLOP", the count the papers' tables give)."""
    import torch

    import models

    model = models.create(backbone).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    if not resolution:
        return params, None
    from models.flops import count_macs  # counts the fused attention as the two matmuls it replaces

    return params, count_macs(model, torch.zeros(1, 3, resolution, resolution)) / 1e9


def cost(row: dict) -> dict:
    """Paper and measured parameters (M) and MACs (G) of a row: the classifier for ImageNet rows, the whole
    detector or segmentor (as its evaluation counted it) for dense rows."""
    paper = row.get("paper_cost") or {}
    out = {"paper_params_m": paper.get("params_m"), "paper_flops_g": paper.get("flops_g"),
           "convention": paper.get("flops_convention"), "params_m": None, "flops_g": None}
    if row.get("backbone_cost"):  # the project's tables (pipeline/gather.py)
        out["backbone_params_m"], out["backbone_flops_g"] = (row["backbone_cost"]["params_m"],
                                                             row["backbone_cost"]["macs_g"])
    if row["kind"] == "pretrain":
        resolution = _resolution(paper.get("resolution"))
        out["params_m"], out["flops_g"] = backbone_cost(row["backbone"], resolution if paper.get("flops_g") else None)
    else:
        for measured in row["all_measured"].values():
            if measured.get("params"):
                out["params_m"] = measured["params"] / 1e6
    return out


def _resolution(text) -> int | None:
    found = re.match(r"\s*(\d+)", str(text or ""))
    return int(found.group(1)) if found else None


# ---- the project's tables: seeds, intervals, ranks ----


def _place(ranks: list[int]) -> str:
    lo, hi = ranks
    return str(lo) if lo == hi else f"{lo}-{hi}"


def ranking(table: dict, rows: list["RowReport"]) -> dict[str, list[list[str]]]:
    """Per compared metric: place (a range where the seeds cannot order the rows), row, mean ± std (n), 95 %
    interval, the backbone's parameters and MACs, and the pretraining's images/s; best first."""
    by_id = {r.row["id"]: r for r in rows}
    out = {}
    for metric, comp in table.get("comparison", {}).items():
        lines = []
        sign = -1 if comp["higher_is_better"] else 1
        order = sorted(comp["ranks"], key=lambda k: (*comp["ranks"][k], sign * by_id[k].row["summary"][metric]["mean"]))
        for row_id in order:
            r = by_id[row_id]
            summ = r.row["summary"][metric]
            ci = summ["ci95"]
            rate = r.row.get("pretrain_images_per_s")
            lines.append([_place(comp["ranks"][row_id]), r.row["row"],
                          f"{summ['mean']:.2f} ± {summ['std']:.2f} (n={summ['n']})",
                          f"[{ci[0]:.2f}, {ci[1]:.2f}]", number(r.cost.get("backbone_params_m"), 1),
                          number(r.cost.get("backbone_flops_g"), 2), number(rate, 1)])
        out[metric] = lines
    return out


RANKING_HEADER = ["place", "row", "mean ± std (n)", "95 % interval", "backbone params (M)", "backbone MACs (G)",
                  "pretraining img/s"]


def pairwise_lines(table: dict, rows: list["RowReport"]) -> dict[str, list[str]]:
    """Per compared metric, each pair: the difference of means with its interval, and which is better where
    the interval excludes zero."""
    names = {r.row["id"]: r.row["row"] for r in rows}
    out = {}
    for metric, comp in table.get("comparison", {}).items():
        lines = []
        for p in comp["pairwise"]:
            lo, hi = p["ci95"] if p["ci95"] else (None, None)
            interval = f"[{lo:+.2f}, {hi:+.2f}]" if lo is not None else "no interval"
            verdict = f"{names[p['better']]} better" if p["better"] else "not resolved by these seeds"
            lines.append(f"{names[p['a']]} − {names[p['b']]}: {p['difference']:+.2f} {interval} → {verdict}")
        out[metric] = lines
    return out


# ---- the report of one table ----


@dataclass
class RowReport:
    row: dict
    judgements: list[Judgement]
    deviations: list[str]
    provenance: list[str]
    usage: list[Usage]
    cost: dict


def analyse(table: dict) -> list[RowReport]:
    out = []
    for row in table["rows"]:
        out.append(RowReport(row, judge_row(row, table["target"], table["scale"]), deviations(row, table["scale"]),
                             provenance(row, table), usage(row), cost(row)))
    return out


def report_name(table: dict) -> str:
    """`demo` for the demo's one-row table, else the table target."""
    return table.get("report") or table["target"]


def write_table_report(table_json: Path, reports: Path) -> tuple[Path, Path]:
    """reports/<name>.md (plots in reports/<name>/) and the self-contained reports/<name>.html; a smoke-scale
    table's under reports/smoke/."""
    from pipeline import plots, render

    table = json.loads(Path(table_json).read_text())
    name = paths.scaled(report_name(table), table["scale"])
    rows = analyse(table)
    (reports / name).mkdir(parents=True, exist_ok=True)  # the figures' folder, also when a table has none
    figures = plots.table_figures(table, rows, reports / name)
    md, html = reports / f"{name}.md", reports / f"{name}.html"
    render.write_markdown(table, rows, figures, md, table_json)
    render.write_html(table, rows, figures, html, table_json)
    return md, html


# ---- the index ----


def status(table: dict | None) -> str:
    """not run, smoke, partial (rows measured so far), or how many rows reproduced every judged metric."""
    if table is None:
        return "not run"
    judged = [[j for j in judge_row(row, table["target"], table["scale"]) if j.verdict != "not measured"]
              for row in table["rows"]]
    measured, total = sum(1 for r in judged if r), len(table["rows"])
    if table["scale"] == "smoke":
        return f"smoke: {measured} of {total} rows ran"
    if measured < total:
        return f"partial: {measured} of {total} rows measured"
    if table["paper"] == registry.PROJECT:
        return f"{measured} of {total} rows measured (no paper values: a comparison)"
    ok = sum(1 for r in judged if all(j.verdict in ("reproduced", "no band", "paper value not available")
                                      for j in r))
    return f"{ok} of {total} rows reproduced"


def write_index(results: Path, reports: Path) -> tuple[Path, Path]:
    """reports/index.html and reports/README.md: every table target, its status and its report."""
    from pipeline import render

    entries = []
    names = [(t, e.paper, e.title) for t, e in targets.reproducible().items()]
    names += [(t, ckpts[0].paper, released.TITLE) for t, ckpts in released.targets().items()]
    for target, paper, title in names:
        for scale in SCALES:
            table = _read_json(Path(results) / "tables" / f"{paths.scaled(target, scale)}.json")
            if table is not None or scale == "full":
                entries.append(_index_entry(target, paper, title, table, reports, scale))
    demo = _read_json(Path(results) / "tables" / f"{paths.scaled(paths.DEMO, 'smoke')}.json")
    if demo is not None:
        entries.insert(0, _index_entry("demo", demo["paper"], f"{demo['title']} (demo row)", demo, reports, "smoke"))
    return render.write_index(entries, reports)


def _index_entry(target: str, paper: str, title: str, table: dict | None, reports: Path, scale: str) -> dict:
    """One line of the index: a table at one scale (a smoke table has its own line beside the full one)."""
    page = f"{paths.scaled(target, scale)}.html"
    return {"target": target if scale == "full" else f"{target} ({scale})", "paper": paper, "title": title,
            "status": status(table), "report": page if (reports / page).exists() else None,
            "date": (table or {}).get("gathered"), "commit": (table or {}).get("code_version")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", action="append", default=[], type=Path, help="a gathered table JSON")
    parser.add_argument("--all", action="store_true", help="every table JSON under results/tables")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--reports", type=Path, default=Path("reports"))
    parser.add_argument("--log-file", help="also write the log to this file")
    args = parser.parse_args(argv)
    log = setup_logging(args.log_file, "report")
    tables = args.table + (sorted((args.results / "tables").glob("*.json")) if args.all else [])
    if not tables and not args.all:
        parser.error("give --table FILE or --all")
    try:
        for table_json in tables:
            md, html = write_table_report(table_json, args.reports)
            log.info("%s -> %s, %s", table_json, md, html)
        with waiting_lock(args.reports / ".index.lock", log):  # report jobs running side by side take turns
            index = write_index(args.results, args.reports)
        log.info("index -> %s", ", ".join(map(str, index)))
    except (registry.ConfigError, KeyError, OSError) as e:
        return fail(log, str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

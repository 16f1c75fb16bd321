"""`python -m pipeline plan <target> ...`: what a target would cost before anything is submitted.

For each training, evaluation and gathering job the target needs (the same jobs `snakemake -n <target>` lists;
tests/test_plan.py compares them): GPUs per node x nodes, the wall-time limit, GPU-hours at that limit, and
whether its output already exists (then it does not run). The total counts the jobs still to run.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from pipeline import jobs, registry, released, targets
from pipeline.data import sources

CONFIG = registry.CONFIG_DIR / "config.yaml"


def load_config(overrides: list[str]) -> dict:
    """config/config.yaml with `key=value` overrides, as snakemake's `--config` applies them."""
    config = registry.load_yaml(CONFIG)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise registry.ConfigError(f"--config {item!r}: expected key=value")
        config[key] = yaml.safe_load(value)
    return registry.check_config(config)


def _jobs(name: str, config: dict, datasets: dict) -> list[tuple[jobs.Job, str]]:
    """(job, its scale) for each job behind a target name; the demo runs at smoke scale."""
    if name == "demo":
        return [(job, "smoke") for job in jobs.demo_jobs(config, datasets)]
    if name.endswith(released.SUFFIX) and name in released.targets():
        return [(job, config["scale"]) for job in jobs.released_jobs(name, config["scale"], datasets,
                                                                     config["data_root"])]
    return [(job, config["scale"]) for exp in targets.resolve(name, config["paper"])
            for job in jobs.jobs(exp.target, config["scale"], datasets, jobs.table_seeds(exp.target, config),
                                config["pretrain_source"])]


def plan(names: list[str], config: dict, root: Path = Path(".")) -> dict:
    """Each job of the named targets once: its rule, output, GPUs x nodes, hours and whether it is done."""
    datasets = sources.datasets(config["data_root"])
    rows, seen = [], set()
    for job, scale in (pair for name in names for pair in _jobs(name, config, datasets)):
        if job.output in seen:
            continue
        seen.add(job.output)
        res = job.resources(scale)
        gpus = res["gpus"] * res["nodes"]
        rows.append({"rule": job.rule, "output": job.output, "gpus_per_node": res["gpus"],
                     "nodes": res["nodes"], "hours": res["minutes"] / 60,
                     "gpu_hours": gpus * res["minutes"] / 60, "exists": (root / job.output).exists()})
    todo = [r for r in rows if not r["exists"]]
    return {"scale": config["scale"], "jobs": rows,
            "total": {"jobs": len(todo), "gpu_jobs": sum(1 for r in todo if r["gpu_hours"]),
                      "gpu_hours": sum(r["gpu_hours"] for r in todo), "done": len(rows) - len(todo)}}


def render(result: dict) -> str:
    from tabulate import tabulate

    body = [[r["rule"], r["output"], f"{r['gpus_per_node']} x {r['nodes']}" if r["gpu_hours"] else "cpu",
             f"{r['hours']:g}", f"{r['gpu_hours']:g}", "yes" if r["exists"] else "no"] for r in result["jobs"]]
    table = tabulate(body, headers=["rule", "output", "GPUs x nodes", "hours (limit)", "GPU-hours", "exists"],
                     tablefmt="simple", disable_numparse=True)
    t = result["total"]
    return (f"{table}\n\nscale {result['scale']}: {t['jobs']} jobs to run ({t['gpu_jobs']} on GPUs), "
            f"{math.ceil(t['gpu_hours']):,} GPU-hours at their wall-time limits; {t['done']} already done. "
            "Nothing was submitted.")

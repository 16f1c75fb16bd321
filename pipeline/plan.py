"""`python -m pipeline plan <target> ...`: what a target would cost before anything is submitted.

For each training, evaluation and gathering job the target needs (the same jobs `snakemake -n <target>` lists;
tests/test_plan.py compares them): GPUs per node x nodes, the wall-time limit, GPU-hours at that limit, and
whether its output already exists (then it does not run). The total counts the jobs still to run.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from pipeline import experiments, registry
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
    registry.validate(config, "config.schema.yaml", "config/config.yaml (or --config overrides)")
    return config


def resolve(target: str, paper: str) -> list[str]:
    """Table targets behind a name: `<paper>_table<N>` or a descriptive one, `table<N>` (paper from config), `all`."""
    reproducible = experiments.reproducible()
    if target == "all":
        return list(reproducible)
    if target.startswith("table") and target[5:].isdigit():
        found = experiments.numbered(paper).get(int(target[5:]))
        if not found:
            numbers = ", ".join(f"table{n}" for n in experiments.numbered(paper))
            raise registry.ConfigError(f"{target}: {paper} has no table numbered {target[5:]}; its numbered "
                                       f"tables: {numbers}")
        return [e.target for e in found]
    exp = experiments.experiments().get(target)
    if exp is None:
        raise registry.ConfigError(experiments.unknown_target(target, paper, others=("all",)))
    if exp.not_reproduced:
        raise registry.ConfigError(f"{target} ({exp.paper} {exp.title}) is not reproduced: {exp.not_reproduced}")
    return [target]


def plan(targets: list[str], config: dict, root: Path = Path(".")) -> dict:
    datasets = sources.datasets(config["data_root"])
    scale = config["scale"]
    rows, seen = [], set()
    for name in targets:
        for target in resolve(name, config["paper"]):
            for job in experiments.jobs(target, scale, datasets, config["seeds"]):
                if job.output in seen:
                    continue
                seen.add(job.output)
                res = job.resources(scale)
                gpus = res["gpus"] * res["nodes"]
                rows.append({"rule": job.rule, "output": job.output, "gpus_per_node": res["gpus"],
                             "nodes": res["nodes"], "hours": res["minutes"] / 60,
                             "gpu_hours": gpus * res["minutes"] / 60, "exists": (root / job.output).exists()})
    todo = [r for r in rows if not r["exists"]]
    return {"scale": scale, "jobs": rows,
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

"""Where everything lands: each result path says what made it. Used by the rules, the job list, `dvcgen` and the
reports; no other module spells these paths.

    results/pretrain/<dataset>/<backbone>/<pretrain recipe>/seed<seed>/{settings.yaml,model.pth,metrics.json}
    results/finetune/<dataset>/<task>/<backbone>/<recipe>/<schedule>/seed<seed>/{settings.yaml,model_final.pth}
    results/evaluate/<dataset>/<task>/<backbone>/<recipe>/<schedule>/seed<seed>/{settings.yaml,metrics.json}
    results/tables/<target>.{json,metrics.json}, at smoke scale results/tables/smoke/<target>...
    reports/<target>.{md,html}, reports/<target>/*.png (reports/smoke/<target>... at smoke scale),
    reports/index.html, reports/README.md
    logs/<rule>/...

<task> is the detectron2 framework and <dataset> the prepared dataset (the embedded one at smoke scale).
Training state that resumes a run lives in the undeclared `state/` folder of its job directory.
"""

from __future__ import annotations

from pipeline.settings import SETTINGS_FILE

# The file each job writes, in its job directory.
OUTPUT = {"pretrain": "model.pth", "import_weights": "model.pth", "finetune": "model_final.pth",
          "evaluate": "metrics.json", "evaluate_released": "metrics.json",
          "import_released": "model.pth", "convert_released": "model_final.pth"}
PRETRAIN_METRICS = "metrics.json"
# Beside each training or evaluation job's outputs: what it ran on and for how long (one entry per start), and
# (training) each step's scalars; `state/metrics.json` is detectron2's history of a fine-tuning job.
ENVIRONMENT = "environment.json"
HISTORY = "history.jsonl"
FINETUNE_HISTORY = "state/metrics.json"
# A finished training job's curves as tables DVC plots reads (pipeline/engine.py write_curves): `train` per step
# (step, loss, lr), `eval` per evaluation (step and the accuracy measured then).
CURVES = {"train": "curve_train.csv", "eval": "curve_eval.csv"}
# The demo's one-row table and report are named so (pipeline/report.py report_name).
DEMO = "demo"


def pretrain_dir(data: str, backbone: str, recipe: str, seed) -> str:
    return f"results/pretrain/{data}/{backbone}/{recipe}/seed{seed}"


def dense_dir(stage: str, data: str, task: str, backbone: str, recipe: str, schedule: str, seed) -> str:
    """Where a fine-tuning job (`stage` finetune) or its evaluation (`stage` evaluate) writes."""
    return f"results/{stage}/{data}/{task}/{backbone}/{recipe}/{schedule}/seed{seed}"


def settings(job_dir: str) -> str:
    return f"{job_dir}/{SETTINGS_FILE}"


def output(job_dir: str, rule: str) -> str:
    return f"{job_dir}/{OUTPUT[rule]}"


def state(job_dir: str) -> str:
    return f"{job_dir}/state"


def scaled(name: str, scale: str = "full") -> str:
    """A table's name below results/tables/ and reports/: smoke-scale tables live apart (`smoke/<name>`), so that
    a smoke run never replaces a full one (and DVC's stages of the two scales declare different files)."""
    return name if scale == "full" else f"{scale}/{name}"


def table(target: str, scale: str = "full") -> str:
    return f"results/tables/{scaled(target, scale)}.json"


def table_metrics(table_file) -> str:
    """Beside a table's JSON: each row's measured values keyed by row id, the form `dvc metrics` shows and diffs."""
    return str(table_file).removesuffix(".json") + ".metrics.json"


def report(name: str, ext: str, scale: str = "full") -> str:
    """A table's report (`md`, `html`); its figures lie in reports/<name>/ (reports/smoke/<name>/)."""
    return f"reports/{scaled(name, scale)}.{ext}"


def report_figures(name: str, scale: str = "full") -> str:
    """The folder of a table report's figures."""
    return f"reports/{scaled(name, scale)}"


REPORT_INDEX = ("reports/index.html", "reports/README.md")


def log(rule: str, job_dir: str) -> str:
    """A job's log: logs/<rule>/<the job directory below its stage>.log."""
    return f"logs/{rule}/{job_dir.split('/', 2)[2]}.log"

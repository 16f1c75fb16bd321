"""Where everything lands: each result path says what made it. Used by the rules, the job list, `dvcgen` and the
reports; no other module spells these paths.

    results/pretrain/<dataset>/<backbone>/<pretrain recipe>/seed<seed>/{settings.yaml,model.pth,metrics.json}
    results/finetune/<dataset>/<task>/<backbone>/<recipe>/<schedule>/seed<seed>/{settings.yaml,model_final.pth}
    results/evaluate/<dataset>/<task>/<backbone>/<recipe>/<schedule>/seed<seed>/{settings.yaml,metrics.json}
    results/tables/<target>.json
    reports/<target>.{md,html}, reports/<target>/*.png, reports/index.html, reports/README.md
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


def table(target: str) -> str:
    return f"results/tables/{target}.json"


def report(name: str, ext: str) -> str:
    """A table's report (`md`, `html`); its figures lie in reports/<name>/."""
    return f"reports/{name}.{ext}"


REPORT_INDEX = ("reports/index.html", "reports/README.md")


def log(rule: str, job_dir: str) -> str:
    """A job's log: logs/<rule>/<the job directory below its stage>.log."""
    return f"logs/{rule}/{job_dir.split('/', 2)[2]}.log"

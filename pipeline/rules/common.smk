# Shared by every rule file: the validated config and registry, the interpreter, the launcher.

import json
import shlex
import sys

from snakemake.exceptions import WorkflowError

from pipeline import jobs, model_index, paths, recipes, registry, settings, targets
from pipeline.data import sources as data_sources
from pipeline.data.extract import MARKER as EXTRACTED_MARKER

try:
    registry.check_config(config)
    registry.papers()
    DATASETS = data_sources.datasets(config["data_root"])
    EXPERIMENTS = targets.experiments()
    targets.check_supplied_weights(config["pretrained_weights"])
    DEMO_RUN = targets.demo_run(config)
except registry.ConfigError as e:
    raise WorkflowError(str(e)) from None

PYTHON = sys.executable
# Training and evaluation commands run through pipeline/launch.py: here, or on SLURM (config `cluster:`).
LAUNCH = f"{shlex.quote(PYTHON)} -m pipeline.launch --cluster {shlex.quote(json.dumps(config['cluster']))}"
DATA = config["data_root"]
# Every job's scale is the config's; smoke jobs read the embedded datasets, full-scale jobs the others.
SCALE = config["scale"]
SEEDS = config["seeds"]
SCALE_DATASETS = sorted((n for n, d in DATASETS.items() if d.embedded == (SCALE == "smoke")), key=len, reverse=True)


wildcard_constraints:
    dataset="|".join(sorted(DATASETS, key=len, reverse=True)),
    backbone=r"[a-z0-9_]+",
    recipe=r"[a-z0-9_]+",
    schedule=r"[a-z0-9_]+",
    seed=r"[0-9]+",
    target=r"[a-z0-9_]+",


def resources_of(rule):
    """The rule's `resources` (GPUs per node, nodes, minutes), from jobs.job_resources."""
    def get(key):
        return lambda wc: jobs.job_resources(rule, wc.get("recipe"), wc.get("backbone"), wc.get("schedule"),
                                             SCALE, wc.get("release"))[key]
    return {"gpu": get("gpus"), "nodes": get("nodes"), "runtime": get("minutes")}


def resolved_settings(job, wc) -> dict:
    """A job's settings document (without its dataset hash) from its wildcards."""
    if wc.backbone not in model_index.list_models():
        raise WorkflowError(f"unknown backbone {wc.backbone!r} in a {job} path; registered models: "
                            f"{', '.join(model_index.list_models())}")
    try:
        doc = settings.resolve(job, wc.backbone, wc.recipe, int(wc.seed), SCALE, config["smoke_profile"],
                               config["smoke"], wc.get("schedule"))
    except registry.ConfigError as e:
        raise WorkflowError(str(e)) from None
    if job != "pretrain" and doc["values"].get("framework", wc.task) != wc.task:
        raise WorkflowError(f"recipe {wc.recipe} trains {doc['values']['framework']}, not {wc.task}")
    return doc


def settings_digest(job):
    """A params value that changes exactly when the job's resolved settings do, so that a changed recipe or
    profile re-runs exactly the jobs whose values changed (settings.yaml says what they are)."""
    return lambda wc: settings.digest(resolved_settings(job(wc) if callable(job) else job, wc))


def write_settings(job, output, wildcards):
    settings.write(output[0], resolved_settings(job, wildcards), wildcards.dataset, DATA)

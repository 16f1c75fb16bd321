# Shared by every rule file: the validated config and registry, the interpreter, path helpers.

import json
import shlex
import sys

from snakemake.exceptions import WorkflowError

from pipeline import experiments, recipes, registry
from pipeline.recipes import TASKS
from pipeline.data import sources as data_sources
from pipeline.data.extract import MARKER as EXTRACTED_MARKER

try:
    registry.validate(config, "config.schema.yaml", "config/config.yaml (or --config overrides)")
    registry.papers()
    registry.row(config["demo"]["compare"]["paper"], config["demo"]["compare"]["table"],
                 config["demo"]["compare"]["row"])
    DATASETS = data_sources.datasets(config["data_root"])
    EXPERIMENTS = experiments.experiments()
    experiments.check_supplied_weights(config["pretrained_weights"])
except registry.ConfigError as e:
    raise WorkflowError(str(e)) from None

PYTHON = sys.executable
# Training and evaluation commands run through pipeline/launch.py: here, or on SLURM (config `cluster:`).
LAUNCH = f"{PYTHON} -m pipeline.launch --cluster {shlex.quote(json.dumps(config['cluster']))}"
DATA = config["data_root"]
DEMO = config["demo"]
SCALE = config["scale"]
SEEDS = config["seeds"]


wildcard_constraints:
    dataset="|".join(sorted(DATASETS, key=len, reverse=True)),
    backbone=r"[a-z0-9_]+",
    recipe=r"[a-z0-9_]+",
    schedule=r"[a-z0-9_]+",
    seed=r"[0-9]+",
    target=r"[a-z0-9_]+",


def scale_of(wildcards) -> str:
    """A job's scale follows its dataset: the embedded sets are smoke scale."""
    return "smoke" if DATASETS[wildcards.dataset].embedded else "full"


def resources_of(rule):
    """The rule's `resources` (GPUs per node, nodes, minutes), from experiments.job_resources."""
    def get(key):
        return lambda wc: experiments.job_resources(rule, wc.get("recipe"), wc.get("backbone"), wc.get("schedule"),
                                                    scale_of(wc))[key]
    return {"gpu": get("gpus"), "nodes": get("nodes"), "runtime": get("minutes")}

# Shared by every rule file: the validated config and registry, the interpreter, path helpers.

import sys

from snakemake.exceptions import WorkflowError

from pipeline import registry
from pipeline.data import sources as data_sources
from pipeline.data.extract import MARKER as EXTRACTED_MARKER

try:
    registry.validate(config, "config.schema.yaml", "config/config.yaml (or --config overrides)")
    registry.papers()
    registry.row(config["demo"]["compare"]["paper"], config["demo"]["compare"]["table"],
                 config["demo"]["compare"]["row"])
    DATASETS = data_sources.datasets(config["data_root"])
except registry.ConfigError as e:
    raise WorkflowError(str(e)) from None

PYTHON = sys.executable
DATA = config["data_root"]
DEMO = config["demo"]


wildcard_constraints:
    dataset="|".join(sorted(DATASETS, key=len, reverse=True)),
    backbone=r"[a-z0-9_]+",
    recipe=r"[a-z0-9_]+",
    schedule=r"[a-z0-9_]+",


def cli_args(settings: dict) -> str:
    """--key value flags for a pipeline command, from a config section."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())

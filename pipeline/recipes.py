"""Training recipes as data (config/recipes/*.yaml): each field's value with where it comes from.

A field's value is either one value for every variant of the paper or a {model name: value} map (`default`
covers the variants not listed). `pretrain(paper, model)` and `finetune(recipe, model, schedule)` give the
values for one job, `resources(...)` its GPUs, nodes and hours, and `provenance(kind, name)` the source of
each field, as reports print them.
"""

from __future__ import annotations

import functools
import math

from pipeline import registry

RECIPES_DIR = registry.CONFIG_DIR / "recipes"


@functools.lru_cache(maxsize=None)
def load(kind: str) -> dict:
    path = RECIPES_DIR / f"{kind}.yaml"
    doc = registry.load_yaml(path)
    registry.validate(doc, "recipes.schema.yaml", path)
    if doc["kind"] != kind:
        raise registry.ConfigError(f"{path}: top level: field 'kind' is {doc['kind']!r}; it must be {kind!r}")
    return doc["recipes"]


def _recipe(kind: str, name: str) -> dict:
    recipes = load(kind)
    if name not in recipes:
        raise registry.ConfigError(f"{RECIPES_DIR / f'{kind}.yaml'}: no recipe {name!r}; recipes: "
                                   f"{', '.join(recipes)}")
    return recipes[name]


def resolve(value, key: str):
    """One model's (or schedule's) value of a field that may be given per variant ({model: value}, `default`
    for the rest)."""
    if not isinstance(value, dict):
        return value
    if key in value:
        return value[key]
    if "default" in value:
        return value["default"]
    raise registry.ConfigError(f"{RECIPES_DIR}: no value for {key!r} among {', '.join(value)}")


def pretrain(paper: str, model: str) -> dict:
    """The ImageNet pretraining settings of `paper`'s recipe for `model`, with the learning rate for the
    recipe's batch (`lr` is given per `lr_batch` images and scales linearly)."""
    fields = _recipe("pretrain", paper)["fields"]
    values = {k: resolve(f["value"], model) for k, f in fields.items()}
    values["lr_at_batch"] = values["lr"] * values["batch_size"] / values["lr_batch"]
    return values


def schedules(recipe: str) -> dict[str, dict]:
    """A fine-tuning recipe's schedules: name -> length and resizing."""
    return _recipe("finetune", recipe)["fields"]["schedules"]["value"]


PER_SCHEDULE = ("hours",)


def finetune(recipe: str, model: str, schedule: str) -> dict:
    """The settings of one fine-tuning job: the recipe's fields for `model`, with the schedule's own values
    (length, resizing, any override such as its lr) on top."""
    fields = _recipe("finetune", recipe)["fields"]
    plans = fields["schedules"]["value"]
    if schedule not in plans:
        raise registry.ConfigError(f"{RECIPES_DIR / 'finetune.yaml'}: recipe {recipe!r} has no schedule "
                                   f"{schedule!r}; schedules: {', '.join(plans)}")
    values = {k: resolve(f["value"], schedule if k in PER_SCHEDULE else model)
              for k, f in fields.items() if k != "schedules"}
    values.update(plans[schedule])
    values["schedule"] = schedule
    return values


def weights_from(recipe: str) -> str | None:
    """The pretraining recipe a fine-tuning recipe's backbones start from, where it names one (`pretrain`: the
    project's recipes); None: each backbone's family recipe."""
    field = _recipe("finetune", recipe)["fields"].get("pretrain")
    return field["value"] if field else None


GPUS_PER_NODE = 8


def resources(kind: str, recipe: str, model: str, schedule: str | None = None) -> dict:
    """GPUs per node, nodes and wall-time minutes of one job, from the recipe's stated hardware."""
    if kind == "pretrain":
        values = pretrain(recipe, model)
        gpus = values["gpus"]
        nodes = math.ceil(gpus / GPUS_PER_NODE)
        return {"gpus": gpus // nodes, "nodes": nodes, "minutes": int(values["hours"] * 60)}
    values = finetune(recipe, model, schedule)
    return {"gpus": values["gpus"], "nodes": values["nodes"], "minutes": int(values["hours"] * 60)}


def provenance(kind: str, name: str) -> dict[str, tuple[str, str]]:
    """field -> (paper | official | assumed, where)."""
    return {k: (f["from"], f["ref"]) for k, f in _recipe(kind, name)["fields"].items()}

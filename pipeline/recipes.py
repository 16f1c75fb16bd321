"""Training recipes as data (config/recipes/*.yaml): each field's value with where it comes from.

A field's value is either one value for every variant of the paper or a {model name: value} map (`default`
covers the variants not listed). `pretrain(paper, model)` gives the values for one model, `provenance(paper)`
the source of each field, as reports and `plan` print them.
"""

from __future__ import annotations

import functools

from pipeline import registry

RECIPES_DIR = registry.CONFIG_DIR / "recipes"


@functools.lru_cache(maxsize=None)
def load(kind: str) -> dict:
    path = RECIPES_DIR / f"{kind}.yaml"
    doc = registry.load_yaml(path)
    registry.validate(doc, "recipes.schema.yaml", path)
    return doc["recipes"]


def _recipe(kind: str, name: str) -> dict:
    recipes = load(kind)
    if name not in recipes:
        raise registry.ConfigError(f"{RECIPES_DIR / f'{kind}.yaml'}: no recipe {name!r}; recipes: "
                                   f"{', '.join(recipes)}")
    return recipes[name]


def resolve(value, model: str):
    """One model's value of a field that may be given per variant ({model: value}, `default` for the rest)."""
    if not isinstance(value, dict):
        return value
    if model in value:
        return value[model]
    if "default" in value:
        return value["default"]
    raise registry.ConfigError(f"{RECIPES_DIR}: no value for {model!r} among {', '.join(value)}")


def pretrain(paper: str, model: str) -> dict:
    """The ImageNet pretraining settings of `paper`'s recipe for `model`, with the learning rate for the
    recipe's batch (`lr` is given per `lr_batch` images and scales linearly)."""
    fields = _recipe("pretrain", paper)["fields"]
    values = {k: resolve(f["value"], model) for k, f in fields.items()}
    values["lr_at_batch"] = values["lr"] * values["batch_size"] / values["lr_batch"]
    return values


def provenance(kind: str, name: str) -> dict[str, tuple[str, str]]:
    """field -> (paper | official | assumed, where)."""
    return {k: (f["from"], f["ref"]) for k, f in _recipe(kind, name)["fields"].items()}

"""Paper tables as targets: the registry's `target`, `experiment` and per-row `run` records, what `table<N>` and
`all` mean, and the one-line answers for a target that is unknown or not reproduced. The Snakefile's rules and
`python -m pipeline plan` both resolve names here.

A table with a `target` is reproduced by that Snakemake target. Each row either has a `run` (backbone, the
fine-tuning schedule, optionally the pretraining recipe and a baseline model for *_delta metrics) or says in
`not_run` why it has none. A backbone is pretrained with its family's recipe (config/recipes/pretrain.yaml)
unless the row names another (the project's ImageNet table: `fair`); a fine-tuned backbone starts from the
pretraining its fine-tuning recipe names (`pretrain`, the project's recipes) or its family's; a backbone with no
recipe (the torchvision baselines) starts from ImageNet weights the user supplies.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from pipeline import model_index, recipes, registry

SUPPLIED = "supplied"
# Targets that are no table.
OTHERS = ("demo", "all")


@dataclass(frozen=True)
class Run:
    """One measured row: what is pretrained, what is fine-tuned on it."""

    paper: str
    table: str
    row: str
    kind: str  # pretrain | finetune
    backbone: str
    pretrain: str  # a pretraining recipe, or `supplied`
    recipe: str | None = None  # fine-tuning recipe
    schedule: str | None = None
    baseline: str | None = None

    def with_backbone(self, backbone: str) -> "Run":
        return replace(self, backbone=backbone, baseline=None)


@dataclass(frozen=True)
class Experiment:
    target: str
    paper: str
    table: str
    title: str
    kind: str
    number: int | None
    verified: bool
    number_note: str | None
    recipe: str | None
    not_reproduced: str | None
    runs: tuple[Run, ...]
    skipped: tuple[tuple[str, str], ...]  # (row id, why)
    seeds: int | None = None  # seeds each row runs with at least (jobs.table_seeds); None: the config's

    def not_reproduced_line(self) -> str:
        return f"{self.target} ({self.paper} {self.title}) is not reproduced: {self.not_reproduced}"

    def run(self, row: str) -> Run:
        found = [r for r in self.runs if r.row == row]
        if not found:
            raise registry.ConfigError(f"{self.target}: no measured row {row!r}; rows: "
                                       f"{', '.join(r.row for r in self.runs)}")
        return found[0]


def default_pretrain(backbone: str) -> str:
    """The pretraining recipe a backbone gets unless a row names one: its family's, or user-supplied weights."""
    family = model_index.family(backbone)
    return family if family in recipes.load("pretrain") else SUPPLIED


def finetune_pretrain(backbone: str, recipe: str) -> str:
    """The pretraining a fine-tuning recipe's backbone starts from: the recipe's `pretrain` (the project's
    recipes), else the backbone's default; a fine-tuning job's path names the recipe, so this is one per job."""
    return recipes.weights_from(recipe) or default_pretrain(backbone)


def _check_recipe(where: str, exp: dict, table: dict) -> str | None:
    recipe = exp.get("recipe")
    if exp["kind"] == "finetune" and recipe is None and not table.get("not_reproduced"):
        raise registry.ConfigError(f"{where}: field 'experiment.recipe' is missing; name a recipe of "
                                   f"config/recipes/finetune.yaml")
    if recipe is not None and recipe not in recipes.load("finetune"):
        raise registry.ConfigError(f"{where}: field 'experiment.recipe' is {recipe!r}; recipes: "
                                   f"{', '.join(recipes.load('finetune'))}")
    return recipe


def _row_run(at: str, paper: str, table_id: str, row: dict, kind: str, recipe: str | None) -> Run:
    spec = row["run"]
    for field in ("backbone", "baseline"):
        if spec.get(field) is not None and spec[field] not in model_index.list_models():
            raise registry.ConfigError(f"{at}: field 'run.{field}' is {spec[field]!r}, not a registered model; "
                                       "see `python -m pipeline tables` and model_index.list_models()")
    own = default_pretrain(spec["backbone"])
    if kind == "finetune":
        own = finetune_pretrain(spec["backbone"], recipe)
    pretrain = spec.get("pretrain") or own
    if pretrain != SUPPLIED and pretrain not in recipes.load("pretrain"):
        raise registry.ConfigError(f"{at}: field 'run.pretrain' is {pretrain!r}; recipes: "
                                   f"{', '.join(recipes.load('pretrain'))}, {SUPPLIED}")
    schedule = spec.get("schedule")
    if kind == "finetune":
        if pretrain != own:
            raise registry.ConfigError(f"{at}: field 'run.pretrain' is {pretrain!r}; a fine-tuned backbone starts "
                                       f"from the weights its fine-tuning recipe gives it ({own})")
        if schedule not in recipes.schedules(recipe):
            raise registry.ConfigError(f"{at}: field 'run.schedule' is {schedule!r}; schedules of {recipe}: "
                                       f"{', '.join(recipes.schedules(recipe))}")
    elif pretrain == SUPPLIED:
        raise registry.ConfigError(f"{at}: an ImageNet row cannot use supplied weights; name a 'run.pretrain' "
                                   "recipe")
    return Run(paper, table_id, row["id"], kind, spec["backbone"], pretrain,
               recipe if kind == "finetune" else None, schedule, spec.get("baseline"))


def _experiment(paper: str, table: dict, path) -> Experiment:
    exp = table["experiment"]
    where = f"{path}: table {table['id']!r}"
    recipe = _check_recipe(where, exp, table)
    runs, skipped = [], []
    for row in table["rows"]:
        at = f"{where} row {row['id']!r}"
        if row.get("run") is not None:
            runs.append(_row_run(at, paper, table["id"], row, exp["kind"], recipe))
            continue
        if not row.get("not_run") and not table.get("not_reproduced"):
            raise registry.ConfigError(f"{at}: has neither 'run' nor 'not_run'; say how the row is measured "
                                       "or why it is not")
        skipped.append((row["id"], row.get("not_run") or table["not_reproduced"]))
    number = table.get("number") or {"value": None, "verified": False}
    return Experiment(table["target"], paper, table["id"], table["title"], exp["kind"], number["value"],
                      number["verified"], number.get("note"), recipe, table.get("not_reproduced"), tuple(runs),
                      tuple(skipped), exp.get("seeds"))


@functools.lru_cache(maxsize=None)
def experiments() -> dict[str, Experiment]:
    """Every registry table with a target, keyed by target name."""
    out = {}
    for paper, doc in registry.papers().items():
        path = registry.PAPERS_DIR / f"{paper}.yaml"
        for table in doc["tables"]:
            if "target" not in table:
                continue
            if "experiment" not in table:
                raise registry.ConfigError(f"{path}: table {table['id']!r}: has a target but no 'experiment'")
            if table["target"] in out:
                raise registry.ConfigError(f"{path}: table {table['id']!r}: field 'target' {table['target']!r} "
                                           "is used by another table")
            out[table["target"]] = _experiment(paper, table, path)
    return out


def reproducible() -> dict[str, Experiment]:
    return {k: e for k, e in experiments().items() if not e.not_reproduced and e.runs}


def numbered(paper: str) -> dict[int, list[Experiment]]:
    """What a paper's `table<N>` means, per recorded number (more than one experiment may share a number)."""
    out: dict[int, list[Experiment]] = {}
    for e in experiments().values():
        if e.paper == paper and e.number is not None:
            out.setdefault(e.number, []).append(e)
    return dict(sorted(out.items()))


def unknown_target(name: str, paper: str, others: tuple[str, ...] = OTHERS) -> str:
    """The one line for a target that is no table: the valid ones, `table<N>` as numbered for the paper."""
    tables = ", ".join(f"table{n}" for n in numbered(paper))
    return (f"unknown target {name!r}; valid: {', '.join(others)}, {tables} (paper {paper} in config), "
            f"{', '.join(reproducible())}")


def unverified_number_line(paper: str, number: int, exp: Experiment) -> str:
    return (f"table{number} of {paper} is taken to be {exp.target} ({exp.title}); that table number is not "
            f"verified: {exp.number_note}")


def resolve(name: str, paper: str) -> list[Experiment]:
    """The table experiments behind a target name: `<paper>_table<N>` or a descriptive one, `table<N>` (the
    paper in config), `all`. A name that is none of them, or a table that is not reproduced, is one line."""
    if name == "all":
        return list(reproducible().values())
    if name.startswith("table") and name[5:].isdigit():
        found = numbered(paper).get(int(name[5:]))
        if not found:
            numbers = ", ".join(f"table{n}" for n in numbered(paper))
            raise registry.ConfigError(f"{name}: {paper} has no table numbered {name[5:]}; its numbered tables: "
                                       f"{numbers}")
    else:
        found = [experiments()[name]] if name in experiments() else None
        if found is None:
            raise registry.ConfigError(unknown_target(name, paper))
    for exp in found:
        if exp.not_reproduced:
            raise registry.ConfigError(exp.not_reproduced_line())
    return found


def check_supplied_weights(weights: dict) -> None:
    """`pretrained_weights` in the config may only name models the pipeline does not pretrain itself."""
    supplied = [m for m in model_index.list_models() if default_pretrain(m) == SUPPLIED]
    for name in weights:
        if name not in supplied:
            raise registry.ConfigError(f"config field 'pretrained_weights.{name}': user weights are for the models "
                                       f"the pipeline does not pretrain: {', '.join(supplied)}")


def demo_run(config: dict) -> Run:
    """The table row the demo runs (config `demo`)."""
    target = config["demo"]["target"]
    if target not in reproducible():
        raise registry.ConfigError(f"config field 'demo.target' is {target!r}; it must be a reproducible table "
                                   "target")
    return experiments()[target].run(config["demo"]["row"])

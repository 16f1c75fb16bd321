"""Paper tables as experiments: the registry's `target`, `experiment` and per-row `run` records, resolved into
the jobs the Snakefile runs and the paths they write.

A table with a `target` is reproduced by that Snakemake target. Each row either has a `run` (backbone, the
fine-tuning schedule, optionally the pretraining recipe and a baseline model for *_delta metrics) or says in
`not_run` why it has none. A backbone is pretrained with its family's recipe (config/recipes/pretrain.yaml)
unless the row names another; a backbone with no recipe (the torchvision baselines) starts from ImageNet
weights the user supplies.

Result paths say what made them:
    results/pretrain/<dataset>/<backbone>/<pretrain recipe>/seed<seed>/{model.pth,metrics.json}
    results/finetune/<dataset>/<task>/<backbone>/<recipe>/<schedule>/seed<seed>/model_final.pth
    results/evaluate/<dataset>/<task>/<backbone>/<recipe>/<schedule>/seed<seed>/metrics.json
    results/tables/<target>.json
where <task> is the detectron2 framework and <dataset> the prepared dataset (the embedded one at smoke scale).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pipeline import model_index, recipes, registry

SUPPLIED = "supplied"
SCALES = ("full", "smoke")
# The prepared dataset a fine-tuning recipe's `dataset` reads (COCO panoptic lives in the COCO tree).
DATA_LAYOUT = {"coco": "coco", "coco_panoptic": "coco", "ade20k": "ade20k"}


@dataclass(frozen=True)
class Run:
    """One measured row: what is pretrained, what is fine-tuned on it, and where the numbers land."""

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
        return Run(self.paper, self.table, self.row, self.kind, backbone, self.pretrain, self.recipe,
                   self.schedule)


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


def default_pretrain(backbone: str) -> str:
    """The pretraining recipe a backbone gets unless a row names one: its family's, or user-supplied weights."""
    family = model_index.family(backbone)
    return family if family in recipes.load("pretrain") else SUPPLIED


def _experiment(paper: str, table: dict, path) -> Experiment:
    exp = table["experiment"]
    where = f"{path}: table {table['id']!r}"
    recipe = exp.get("recipe")
    if exp["kind"] == "finetune" and recipe is None and not table.get("not_reproduced"):
        raise registry.ConfigError(f"{where}: field 'experiment.recipe' is missing; name a recipe of "
                                   f"config/recipes/finetune.yaml")
    if recipe is not None and recipe not in recipes.load("finetune"):
        raise registry.ConfigError(f"{where}: field 'experiment.recipe' is {recipe!r}; recipes: "
                                   f"{', '.join(recipes.load('finetune'))}")
    runs, skipped = [], []
    registered = set(model_index.list_models())
    for row in table["rows"]:
        at = f"{where} row {row['id']!r}"
        spec = row.get("run")
        if spec is None:
            if not row.get("not_run") and not table.get("not_reproduced"):
                raise registry.ConfigError(f"{at}: has neither 'run' nor 'not_run'; say how the row is measured "
                                           "or why it is not")
            skipped.append((row["id"], row.get("not_run") or table["not_reproduced"]))
            continue
        for field in ("backbone", "baseline"):
            if spec.get(field) is not None and spec[field] not in registered:
                raise registry.ConfigError(f"{at}: field 'run.{field}' is {spec[field]!r}, not a registered model; "
                                           "see `python -m pipeline tables` and model_index.list_models()")
        pretrain = spec.get("pretrain") or default_pretrain(spec["backbone"])
        if pretrain != SUPPLIED and pretrain not in recipes.load("pretrain"):
            raise registry.ConfigError(f"{at}: field 'run.pretrain' is {pretrain!r}; recipes: "
                                       f"{', '.join(recipes.load('pretrain'))}, {SUPPLIED}")
        schedule = spec.get("schedule")
        if exp["kind"] == "finetune" and pretrain != default_pretrain(spec["backbone"]):
            raise registry.ConfigError(f"{at}: field 'run.pretrain' is {pretrain!r}; a fine-tuned backbone starts "
                                       f"from its family's weights ({default_pretrain(spec['backbone'])})")
        if exp["kind"] == "finetune":
            if schedule not in recipes.schedules(recipe):
                raise registry.ConfigError(f"{at}: field 'run.schedule' is {schedule!r}; schedules of {recipe}: "
                                           f"{', '.join(recipes.schedules(recipe))}")
        elif pretrain == SUPPLIED:
            raise registry.ConfigError(f"{at}: an ImageNet row cannot use supplied weights; name a 'run.pretrain' "
                                       "recipe")
        runs.append(Run(paper, table["id"], row["id"], exp["kind"], spec["backbone"], pretrain,
                        recipe if exp["kind"] == "finetune" else None, schedule, spec.get("baseline")))
    number = table.get("number") or {"value": None, "verified": False}
    return Experiment(table["target"], paper, table["id"], table["title"], exp["kind"], number["value"],
                      number["verified"], number.get("note"), recipe, table.get("not_reproduced"), tuple(runs),
                      tuple(skipped))


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


def unknown_target(name: str, paper: str, others: tuple[str, ...] = ("demo", "all")) -> str:
    """The one line for a target that is no table: the valid ones, `table<N>` as numbered for the paper."""
    tables = ", ".join(f"table{n}" for n in numbered(paper))
    return (f"unknown target {name!r}; valid: {', '.join(others)}, {tables} (paper {paper} in config), "
            f"{', '.join(reproducible())}")


def check_supplied_weights(weights: dict) -> None:
    """`pretrained_weights` in the config may only name models the pipeline does not pretrain itself."""
    supplied = [m for m in model_index.list_models() if default_pretrain(m) == SUPPLIED]
    for name in weights:
        if name not in supplied:
            raise registry.ConfigError(f"config field 'pretrained_weights.{name}': user weights are for the models "
                                       f"the pipeline does not pretrain: {', '.join(supplied)}")


# ---- datasets and paths


def dataset(layout: str, scale: str, datasets: dict) -> str:
    """The prepared dataset a job reads: the full one, or at smoke scale the embedded one of the same layout."""
    if scale not in SCALES:
        raise registry.ConfigError(f"config field 'scale' is {scale!r}; valid: {', '.join(SCALES)}")
    embedded = scale == "smoke"
    names = [n for n, d in datasets.items() if d.layout == layout and d.embedded == embedded]
    if not names:
        raise registry.ConfigError(f"config/datasets.yaml: no {'embedded ' if embedded else ''}dataset with "
                                   f"layout {layout!r}")
    return sorted(names)[0]


def pretrain_dir(data: str, backbone: str, recipe: str, seed: int) -> str:
    return f"results/pretrain/{data}/{backbone}/{recipe}/seed{seed}"


def dense_dir(stage: str, data: str, task: str, backbone: str, recipe: str, schedule: str, seed) -> str:
    """Where a fine-tuning job (`stage` finetune) or its evaluation (`stage` evaluate) writes."""
    return f"results/{stage}/{data}/{task}/{backbone}/{recipe}/{schedule}/seed{seed}"


def table_path(target: str) -> str:
    return f"results/tables/{target}.json"


def _runs(target: str, seeds: list[int]):
    """Each run a target's rows need (the baselines of delta rows included), under each seed."""
    for run in experiments()[target].runs:
        for r in (run, run.with_backbone(run.baseline)) if run.baseline else (run,):
            for seed in seeds:
                yield r, seed


def run_outputs(run: Run, scale: str, datasets: dict, seed: int) -> dict[str, str]:
    """The files one run's numbers come from: `pretrain` metrics (ImageNet rows, and top-1 beside detection
    rows when we pretrain), `evaluate` metrics (fine-tuning rows)."""
    out = {}
    for job in run_jobs(run, scale, datasets, seed):
        if job.rule == "pretrain":
            out["pretrain"] = f"{job.output.rsplit('/', 1)[0]}/metrics.json"
        elif job.rule == "evaluate":
            out["evaluate"] = job.output
    return out


def table_inputs(target: str, scale: str, datasets: dict, seeds: list[int]) -> list[str]:
    """Every metrics file `gather_table` reads for a target (baselines of delta rows included)."""
    files = [f for run, seed in _runs(target, seeds) for f in run_outputs(run, scale, datasets, seed).values()]
    return list(dict.fromkeys(files))


# ---- jobs and what they ask of a cluster

# A smoke-scale job: one GPU (it runs on the CPU where there is none), minutes. A full-scale evaluation: one GPU
# over COCO val or ADE20K val, a limit of two hours (assumed: the papers give no evaluation hardware).
SMOKE_RESOURCES = {"gpus": 1, "nodes": 1, "minutes": 30}
EVALUATE_RESOURCES = {"gpus": 1, "nodes": 1, "minutes": 120}
# CPU steps (importing user weights, gathering a table).
LOCAL_RESOURCES = {"gpus": 0, "nodes": 1, "minutes": 30}


def job_resources(rule: str, recipe: str | None, backbone: str | None, schedule: str | None, scale: str) -> dict:
    """GPUs per node, nodes and wall-time minutes of one job: the rules' `resources` and the plan."""
    if rule not in ("pretrain", "finetune", "evaluate"):
        return LOCAL_RESOURCES
    if scale == "smoke" or recipe == "demo":
        return SMOKE_RESOURCES
    if rule == "pretrain":
        return recipes.resources("pretrain", recipe, backbone)
    if rule == "finetune":
        return recipes.resources("finetune", recipe, backbone, schedule)
    return EVALUATE_RESOURCES


@dataclass(frozen=True)
class Job:
    rule: str
    output: str
    backbone: str | None = None
    recipe: str | None = None
    schedule: str | None = None
    seed: int | None = None

    def resources(self, scale: str) -> dict:
        return job_resources(self.rule, self.recipe, self.backbone, self.schedule, scale)


def run_jobs(run: Run, scale: str, datasets: dict, seed: int) -> list[Job]:
    """The jobs behind one run: its ImageNet weights (pretrained, or imported when user-supplied), then for
    fine-tuning rows the fine-tuning and its evaluation."""
    where = pretrain_dir(dataset("imagenet", scale, datasets), run.backbone, run.pretrain, seed)
    rule = "import_weights" if run.pretrain == SUPPLIED else "pretrain"
    found = [Job(rule, f"{where}/model.pth", run.backbone, run.pretrain, None, seed)]
    if run.kind == "finetune":
        recipe = recipes.finetune(run.recipe, run.backbone, run.schedule)
        data = dataset(DATA_LAYOUT[recipe["dataset"]], scale, datasets)
        for stage, name in (("finetune", "model_final.pth"), ("evaluate", "metrics.json")):
            where = dense_dir(stage, data, recipe["framework"], run.backbone, run.recipe, run.schedule, seed)
            found.append(Job(stage, f"{where}/{name}", run.backbone, run.recipe, run.schedule, seed))
    return found


def jobs(target: str, scale: str, datasets: dict, seeds: list[int]) -> list[Job]:
    """The training, evaluation and gathering jobs a table target runs (data preparation not included), each
    once, in the order the rows name them."""
    out: dict[str, Job] = {}
    for run, seed in _runs(target, seeds):
        for job in run_jobs(run, scale, datasets, seed):
            out.setdefault(job.output, job)
    out[table_path(target)] = Job("gather_table", table_path(target))
    return list(out.values())


# ---- job settings: the recipes turned into engine flags, full or smoke scale


def flags(settings: dict) -> str:
    """`--key value` flags (None values left out: the engine's default, "off")."""
    out = []
    for key, value in settings.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else f"--no-{key.replace('_', '-')}")
        elif isinstance(value, (list, tuple)):
            out.append(f"{flag} {','.join(str(v) for v in value)}")
        else:
            out.append(f"{flag} {value}")
    return " ".join(out)


def pretrain_settings(recipe: str, backbone: str, scale: str, smoke: dict, seed: int) -> dict:
    """PretrainConfig fields for `backbone` under a pretraining recipe; smoke scale replaces the length,
    batch and resolution and keeps everything else."""
    r = recipes.pretrain(recipe, backbone)
    settings = {
        "epochs": r["epochs"] + r.get("cooldown_epochs", 0), "warmup_epochs": r["warmup_epochs"],
        "batch_size": r["batch_size"], "img_size": r["img_size"], "optimizer": r["optimizer"],
        "lr": r["lr_at_batch"], "min_lr": r["min_lr"], "warmup_lr": r["warmup_lr"],
        "weight_decay": r["weight_decay"], "label_smoothing": r["label_smoothing"], "mixup": r["mixup"],
        "cutmix": r["cutmix"], "mixup_switch_prob": r["mixup_switch_prob"], "randaugment": r["randaugment"],
        "random_erasing": r["random_erasing"], "ema_decay": r["ema_decay"], "clip_grad": r["clip_grad"],
        "drop_path_rate": r["drop_path"], "eval_crop_pct": r["eval_crop_pct"], "seed": seed,
    }
    if scale == "smoke":
        settings.update(smoke)
        settings["epochs"] = settings["warmup_epochs"] = 0
        settings["lr"] = r["lr"] * settings["batch_size"] / r["lr_batch"]
        settings["min_lr"] = min(settings["min_lr"], settings["lr"])
    return settings


def finetune_settings(recipe: str, backbone: str, schedule: str, scale: str, smoke: dict, seed: int) -> dict:
    """FinetuneConfig fields for one fine-tuning job; smoke scale replaces the length, batch and sizes."""
    r = recipes.finetune(recipe, backbone, schedule)
    settings = {
        "task": r["framework"], "optimizer": r["optimizer"], "lr": r["lr"], "weight_decay": r["weight_decay"],
        "batch_size": r["batch_size"], "warmup_iters": r["warmup_iters"], "warmup_ratio": r["warmup_ratio"],
        "clip_grad": r["clip_grad"], "drop_path_rate": r.get("drop_path"), "layer_decay": r.get("layer_decay"),
        "layer_decay_type": r.get("layer_decay_type"), "layer_decay_layers": r.get("layer_decay_layers"),
        "head_lr_mult": r.get("head_lr_mult"), "heads": r.get("heads"), "seed": seed,
    }
    if "epochs" in r:
        settings.update(epochs=r["epochs"], steps=r["steps"])
    else:
        settings.update(iters=r["iters"], poly_power=r["poly_power"])
    if "size" in r:
        settings.update(size=r["size"], jitter_min=r["jitter"][0], jitter_max=r["jitter"][1])
    elif "crop" in r:
        # mmseg's random rescale of `scale` by `ratio_range`: the short side from scale[1] x ratio.
        lo, hi = r["ratio_range"]
        settings.update(short_side=[int(r["scale"][1] * lo), int(r["scale"][1] * hi)], sample="range",
                        max_size=int(r["scale"][0] * hi), crop=r["crop"])
    else:
        settings.update(short_side=r["short_side"], sample=r.get("sample", "choice"), max_size=r["max_size"])
        if "crop_branch" in r:
            settings.update(crop_branch_sides=r["crop_branch"]["short_side"], crop_branch_size=r["crop_branch"]["crop"])
    if scale == "smoke":
        settings.update({k: v for k, v in smoke.items() if k not in ("short_side", "size", "crop")})
        settings.pop("epochs", None)
        settings["warmup_iters"] = min(settings["warmup_iters"], 1)
        if "size" in settings:
            settings["size"] = smoke["size"]
        else:
            settings["short_side"] = smoke["short_side"]
            settings["sample"] = "choice"
            if "crop" in settings:
                settings["crop"] = smoke["crop"]
    return settings


def evaluate_settings(recipe: str, backbone: str, schedule: str, scale: str, smoke: dict) -> dict:
    r = recipes.finetune(recipe, backbone, schedule)
    settings = {}
    if r.get("test_slide"):
        settings.update(slide_crop=r["test_slide"][0], slide_stride=r["test_slide"][1])
    if r.get("test_ratios"):
        settings.update(aug_ratios=r["test_ratios"], flip=r.get("test_flip", False))
    if scale == "smoke":
        return {**settings, **smoke}
    min_size, max_size = r["test_size"]
    return {"min_size": min_size, "max_size": max_size, **settings}


"""One resolved settings file per job: what a pretraining, fine-tuning or evaluation job runs with.

The `resolve_*_settings` rules write `<job dir>/settings.yaml` before the job runs; the engine reads it
(`--settings PATH`) into its dataclass below, and the table JSON and reports read it back. Its fields:

    job, backbone, recipe, schedule, seed, scale   what the job is
    dataset                                        the prepared dataset: name, root, manifest and its index hash
    values                                         every value the job runs with, under the recipe's own keys
    provenance                                     per value: {from, ref}, as the recipe states it (paper |
                                                   official | assumed), `engine` for an engine default, `smoke`
                                                   for a value a smoke profile put in
    smoke                                          at smoke scale: the profile and the full-scale values it replaced

A dataclass's field names are the recipe keys (config/recipes/*.yaml) plus engine switches no recipe sets
(AMP, checkpoint interval, loader workers). Values a recipe records but an engine does not read (its GPUs and
hours, for example) stay in the file and the engine names them when it starts.

This module imports neither torch nor detectron2: the Snakefile uses it at parse time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline import recipes, registry
from pipeline.data import sources
from pipeline.data.manifest import index_hash
from pipeline.io import atomic_write_text

SETTINGS_FILE = "settings.yaml"
# Evaluation reads the recipe's test keys; fine-tuning the others.
TEST_KEYS = ("test_size", "test_slide", "test_ratios", "test_flip")


@dataclass
class PretrainSettings:
    """pipeline/pretrain.py. Length: `epochs` (+ `cooldown_epochs`, with `warmup_epochs`) over the training set,
    or `steps` (with `warmup_steps`). `lr` is given per `lr_batch` images and scales linearly with `batch_size`."""

    backbone: str
    seed: int = 0
    epochs: int = 0
    cooldown_epochs: int = 0
    warmup_epochs: float = 0.0
    steps: int = 0
    warmup_steps: int = 0
    batch_size: int = 8
    img_size: int = 224
    optimizer: str = "adamw"
    lr: float = 5e-4
    lr_batch: int = 512
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_switch_prob: float = 0.5
    randaugment: str | None = None
    random_erasing: float = 0.0
    ema_decay: float | None = None
    clip_grad: float | None = None
    drop_path: float = 0.1
    eval_crop_pct: float = 0.875
    amp: str = "off"
    channels_last: bool = False
    # torch.compile the training forward and backward (the model's weights and checkpoints are unchanged).
    compile: bool = False
    deterministic: bool = False
    checkpoint_every: int = 5
    workers: int = 0


@dataclass
class FinetuneSettings:
    """pipeline/finetune.py. Length: `iters`, or `epochs` with lr x0.1 at the `steps` epochs; `poly_power` gives a
    polynomial decay instead. Resizing: a short side from `short_side` (`sample` choice | range) capped at
    `max_size`; or with `size`, scale jitter in `jitter` of a size x size canvas and a size x size crop; or, for
    semantic segmentation, mmseg's random rescale of `scale` by `ratio_range` and a `crop` x `crop` crop."""

    backbone: str
    seed: int = 0
    framework: str = "mask_rcnn"
    epochs: int = 0
    steps: list[int] = field(default_factory=list)
    iters: int = 0
    poly_power: float = 0.0
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    head_lr_mult: float = 1.0
    # lr decay towards the input (finetune.lr_layer); layer_decay_layers 0: one per backbone stage.
    layer_decay: float = 1.0
    layer_decay_type: str = "stage_wise"
    layer_decay_layers: int = 0
    clip_grad: float | None = None
    drop_path: float | None = None
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    short_side: list[int] = field(default_factory=lambda: [800])
    sample: str = "choice"
    max_size: int = 1333
    size: int = 0
    jitter: list[float] = field(default_factory=lambda: [1.0, 1.0])
    scale: list[int] | None = None
    ratio_range: list[float] | None = None
    crop: int = 512
    # The DETR-style crop branch: {short_side: [...], crop: [min, max]}.
    crop_branch: dict | None = None
    heads: str = "standard"
    # detectron2's Mask R-CNN FPN defaults (512 RoIs per image, 1000 proposals); smoke profiles lower them.
    roi_batch_size_per_image: int = 512
    rpn_post_nms_topk_train: int = 1000
    checkpoint_every: int = 5000
    workers: int = 0


@dataclass
class EvaluateSettings:
    """pipeline/evaluate.py: test size (short side, long-side cap), sliding windows [crop, stride], test-time
    scales and flip (semantic segmentation), and the lowest detection score kept (detectron2's COCO default)."""

    backbone: str
    seed: int = 0
    test_size: list[int] = field(default_factory=lambda: [800, 1333])
    test_slide: list[int] | None = None
    test_ratios: list[float] | None = None
    test_flip: bool = False
    score_thresh: float = 0.05


ENGINES = {"pretrain": PretrainSettings, "finetune": FinetuneSettings, "evaluate": EvaluateSettings}
# Jobs whose settings files `read` accepts: the engines', and the evaluation of a released checkpoint
# (pipeline/released.py), whose values are its paper's test protocol.
JOBS = (*ENGINES, "evaluate_released")
# The length a smoke profile always sets, per job.
LENGTH = {"pretrain": "steps", "finetune": "iters"}
# Keys a smoke profile sets only where the recipe has them: the kind of resizing the job does.
SIZE_KEYS = ("size", "crop", "scale", "ratio_range", "short_side", "sample", "max_size")
# Full-scale keys a smoke length takes the place of.
REPLACED_BY_LENGTH = {"pretrain": ("epochs", "cooldown_epochs", "warmup_epochs"), "finetune": ("epochs",)}


def _recipe_values(job: str, recipe: str, backbone: str, schedule: str | None) -> tuple[dict, dict]:
    """(values, provenance) of the recipe fields a job reads."""
    if job == "pretrain":
        values = recipes.pretrain(recipe, backbone)
        values.pop("lr_at_batch")
        sources = recipes.provenance("pretrain", recipe)
        return values, {k: _source(*sources[k]) for k in values}
    values = recipes.finetune(recipe, backbone, schedule)
    values.pop("schedule")
    sources = recipes.provenance("finetune", recipe)
    plan_source = sources["schedules"]
    provenance = {k: _source(*sources[k]) if k in sources and k not in recipes.schedules(recipe)[schedule]
                  else _source(plan_source[0], f"schedule {schedule}: {plan_source[1]}") for k in values}
    keep = (lambda k: k in TEST_KEYS) if job == "evaluate" else (lambda k: k not in TEST_KEYS)
    return ({k: v for k, v in values.items() if keep(k)}, {k: v for k, v in provenance.items() if keep(k)})


def _source(origin: str, ref: str) -> dict:
    return {"from": origin, "ref": ref}


def _engine_defaults(job: str) -> dict:
    out = {}
    for f in dataclasses.fields(ENGINES[job]):
        if f.name in ("backbone", "seed"):
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def shrink(doc: dict, profile_name: str, profile: dict) -> dict:
    """The same settings at smoke scale: the profile's length (always), batch and sizes take the place of the
    recipe's, and the replaced full-scale values are recorded under `smoke.replaced`. A size key replaces only
    a value the job has (a jitter canvas `size` only in jitter schedules, a `crop` only in semantic ones)."""
    job = doc["job"]
    values, provenance = dict(doc["values"]), dict(doc["provenance"])
    given = profile.get(job, {})
    if job in LENGTH and LENGTH[job] not in given:
        raise registry.ConfigError(f"config/config.yaml: field 'smoke.{profile_name}.{job}.{LENGTH[job]}' is "
                                   "missing; a smoke profile sets every job's length")
    replaced = {}

    def put(key, value, why):
        if key in values and values[key] != value:
            replaced[key] = values[key]
        values[key] = value
        provenance[key] = _source("smoke", why)

    where = f"config/config.yaml smoke.{profile_name}.{job}"
    for key in REPLACED_BY_LENGTH.get(job, ()):
        if values.get(key):
            put(key, 0, f"{where}: the length is `{LENGTH[job]}`")
    for key, value in given.items():
        if key not in SIZE_KEYS or key in values:
            put(key, value, where)
    if job == "finetune":
        put("warmup_iters", min(values["warmup_iters"], given.get("warmup_iters", 1)), where)
    return {**doc, "scale": "smoke", "values": values, "provenance": provenance,
            "smoke": {"profile": profile_name, "replaced": replaced}}


def resolve(job: str, backbone: str, recipe: str, seed: int, scale: str, profile_name: str, profiles: dict,
            schedule: str | None = None) -> dict:
    """The settings document of one job, without its dataset (`write` adds it from the manifest)."""
    values, provenance = _recipe_values(job, recipe, backbone, schedule)
    doc = {"job": job, "backbone": backbone, "recipe": recipe, "schedule": schedule, "seed": seed, "scale": scale,
           "values": values, "provenance": provenance}
    if scale == "smoke":
        if profile_name not in profiles:
            raise registry.ConfigError(f"config/config.yaml: field 'smoke_profile' is {profile_name!r}; profiles: "
                                       f"{', '.join(profiles)}")
        doc = shrink(doc, profile_name, profiles[profile_name])
    engine_ref = f"pipeline/settings.py {ENGINES[job].__name__} default"
    for key, value in _engine_defaults(job).items():
        if key not in doc["values"]:
            doc["values"][key], doc["provenance"][key] = value, _source("engine", engine_ref)
    return doc


def digest(doc: dict) -> str:
    """SHA-256 over a settings document: what the job runs with and where each value comes from."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def write(path: str | Path, doc: dict, dataset: str, data_root: str) -> dict:
    """Write the settings file atomically, with the dataset's manifest hash."""
    manifest = sources.manifest(data_root, dataset)
    full = {**{k: v for k, v in doc.items() if k not in ("values", "provenance", "smoke")},
            "dataset": {"name": dataset, "root": sources.prepared(data_root, dataset), "manifest": manifest,
                        "index_sha256": index_hash(manifest)},
            "values": doc["values"], "provenance": doc["provenance"]}
    if "smoke" in doc:
        full["smoke"] = doc["smoke"]
    header = ("# Resolved by pipeline/settings.py for one job; the job reads this file and reports cite it.\n"
              "# Edit the recipe (config/recipes/) or the config, not this file: Snakemake rewrites it.\n")
    atomic_write_text(path, header + yaml.safe_dump(full, sort_keys=False, width=120))
    return full


def read(path: str | Path) -> dict:
    """A settings file's document; one line naming the file when it is not one."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise registry.ConfigError(f"{path}: cannot read the settings file: {e}") from None
    if not isinstance(doc, dict) or doc.get("job") not in JOBS or not isinstance(doc.get("values"), dict):
        raise registry.ConfigError(f"{path}: not a settings file (needs `job`: {', '.join(JOBS)}, and `values`); "
                                   "the resolve_*_settings rules write them")
    return doc


def engine_config(path: str | Path, job: str):
    """(the job's dataclass built from the file, keys the file records that this engine does not read)."""
    doc = read(path)
    if doc["job"] != job:
        raise registry.ConfigError(f"{path}: settings of a {doc['job']} job, not {job}")
    cls = ENGINES[job]
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in doc["values"].items() if k in names}
    kwargs.update(backbone=doc["backbone"], seed=int(doc.get("seed") or 0))
    try:
        cfg = cls(**kwargs)
    except TypeError as e:
        raise registry.ConfigError(f"{path}: {e}") from None
    return cfg, sorted(set(doc["values"]) - names)


def for_engine(path: str | Path, job: str, backbone: str, seed: int = 0, **values) -> dict:
    """A settings file written by hand for running an engine directly (tests, one-off runs): engine defaults
    with `values` on top."""
    unknown = set(values) - {f.name for f in dataclasses.fields(ENGINES[job])}
    if unknown:
        raise registry.ConfigError(f"{job} settings have no field(s) {', '.join(sorted(unknown))}")
    merged = {**_engine_defaults(job), **values}
    doc = {"job": job, "backbone": backbone, "recipe": None, "schedule": None, "seed": seed, "scale": "custom",
           "values": merged, "provenance": {k: _source("engine" if k not in values else "custom", "by hand")
                                            for k in merged}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))
    return doc

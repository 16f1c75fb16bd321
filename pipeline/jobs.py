"""The jobs a table target runs and what each asks of a cluster: the list the Snakefile's target rules, the
plan, `dvcgen`, the demo and the table gathering all read.

A run (one table row, pipeline/targets.py) needs its ImageNet weights (pretrained, or imported when
user-supplied), and for fine-tuning rows the fine-tuning and its evaluation. A job's scale comes from the
config (`scale`); at smoke scale every job reads the embedded dataset of the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import paths, recipes, registry, released, targets, tasks
from pipeline.targets import SUPPLIED, Run, experiments

SCALES = ("full", "smoke")

# A smoke-scale job: one GPU (it runs on the CPU where there is none), minutes. A full-scale evaluation: one GPU
# over COCO val or ADE20K val, a limit of two hours (assumed: the papers give no evaluation hardware).
SMOKE_RESOURCES = {"gpus": 1, "nodes": 1, "minutes": 30}
EVALUATE_RESOURCES = {"gpus": 1, "nodes": 1, "minutes": 120}
# CPU steps (importing user weights, gathering a table).
LOCAL_RESOURCES = {"gpus": 0, "nodes": 1, "minutes": 30}


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


def job_resources(rule: str, recipe: str | None, backbone: str | None, schedule: str | None, scale: str,
                  release: str | None = None) -> dict:
    """GPUs per node, nodes and wall-time minutes of one job: the rules' `resources` and the plan (`release`: the
    file stem of a released checkpoint's evaluation)."""
    if rule not in ("pretrain", "finetune", "evaluate", "evaluate_released"):
        return LOCAL_RESOURCES
    if scale == "smoke":
        return SMOKE_RESOURCES
    if rule == "evaluate_released":
        return released.EVALUATE_RESOURCES[released.by_stem(backbone, release).kind]
    if rule == "pretrain":
        return recipes.resources("pretrain", recipe, backbone)
    if rule == "finetune":
        return recipes.resources("finetune", recipe, backbone, schedule)
    return EVALUATE_RESOURCES


@dataclass(frozen=True)
class Job:
    rule: str
    dir: str  # the job directory (the table path for gather_table)
    dataset: str | None = None
    backbone: str | None = None
    recipe: str | None = None
    schedule: str | None = None
    seed: int | None = None
    release: str | None = None  # a released checkpoint's file stem
    reads: str | None = None  # the output of the job this one starts from (a fine-tuning's weights, an evaluation's)

    @property
    def output(self) -> str:
        """The file the job writes (for gathering and fetching jobs, `dir` is that file)."""
        return self.dir if self.rule in ("gather_table", "gather_released", "fetch_weights") else \
            paths.output(self.dir, self.rule)

    @property
    def settings(self) -> str | None:
        return paths.settings(self.dir) if self.rule in ("pretrain", "finetune", "evaluate") else None

    @property
    def metrics(self) -> str | None:
        """The metrics a table row reads from this job."""
        return {"pretrain": f"{self.dir}/{paths.PRETRAIN_METRICS}", "evaluate": self.output}.get(self.rule)

    def resources(self, scale: str) -> dict:
        return job_resources(self.rule, self.recipe, self.backbone, self.schedule, scale, self.release)


def imagenet_job(backbone: str, pretrain: str, scale: str, datasets: dict, seed) -> Job:
    """The job that gives a backbone its ImageNet weights: pretraining with `pretrain`, or importing them (weights
    the user supplies, or the authors' released checkpoint)."""
    imagenet = dataset("imagenet", scale, datasets)
    rule = {SUPPLIED: "import_weights", released.SOURCE: "import_released"}.get(pretrain, "pretrain")
    return Job(rule, paths.pretrain_dir(imagenet, backbone, pretrain, seed), imagenet, backbone, pretrain, None, seed)


def weights_source(backbone: str, pretrain: str, pretrain_source) -> str:
    """What a fine-tuning row's backbone starts from: `pretrain` (its recipe, or supplied weights), or the
    released checkpoint when config `pretrain_source` asks for it (globally or for this backbone) and one exists."""
    wanted = released.requested(backbone, pretrain_source)
    return released.SOURCE if wanted == released.SOURCE and released.for_backbone(backbone) else pretrain


def run_jobs(run: Run, scale: str, datasets: dict, seed: int, pretrain_source="ours") -> list[Job]:
    """The jobs behind one run: its ImageNet weights, then for fine-tuning rows the fine-tuning and evaluation."""
    source = weights_source(run.backbone, run.pretrain, pretrain_source) if run.kind == "finetune" else run.pretrain
    found = [imagenet_job(run.backbone, source, scale, datasets, seed)]
    if run.kind == "finetune":
        framework = recipes.finetune(run.recipe, run.backbone, run.schedule)["framework"]
        data = dataset(tasks.task(framework).layout, scale, datasets)
        for stage in ("finetune", "evaluate"):
            where = paths.dense_dir(stage, data, framework, run.backbone, run.recipe, run.schedule, seed)
            found.append(Job(stage, where, data, run.backbone, run.recipe, run.schedule, seed, reads=found[-1].output))
    return found


def table_seeds(target: str, config: dict, scale: str | None = None) -> list[int]:
    """The seeds a table's rows run with: the config's `seeds`, extended with the next unused integers to the
    table's own count (`experiment.seeds`, the project's tables); at smoke scale the smoke profile's `seeds`
    caps that count."""
    seeds = list(config["seeds"])
    want = experiments()[target].seeds if target in experiments() else None
    if not want:
        return seeds
    if (scale or config["scale"]) == "smoke":
        want = min(want, config["smoke"][config["smoke_profile"]].get("seeds", want))
    start = max(seeds, default=-1) + 1
    return seeds + list(range(start, start + max(0, want - len(seeds))))


def _runs(target: str, seeds: list[int]):
    """Each run a target's rows need (the baselines of delta rows included), under each seed."""
    for run in experiments()[target].runs:
        for r in (run, run.with_backbone(run.baseline)) if run.baseline else (run,):
            for seed in seeds:
                yield r, seed


def jobs(target: str, scale: str, datasets: dict, seeds: list[int], pretrain_source="ours") -> list[Job]:
    """The training, evaluation and gathering jobs a table target runs (data preparation not included), each
    once, in the order the rows name them."""
    out: dict[str, Job] = {}
    for run, seed in _runs(target, seeds):
        for job in run_jobs(run, scale, datasets, seed, pretrain_source):
            out.setdefault(job.output, job)
    out[paths.table(target, scale)] = Job("gather_table", paths.table(target, scale))
    return list(out.values())


def table_inputs(target: str, scale: str, datasets: dict, seeds: list[int], pretrain_source="ours") -> list[str]:
    """Every file `gather_table` reads for a target: each job's metrics and settings."""
    files = []
    for run, seed in _runs(target, seeds):
        for job in run_jobs(run, scale, datasets, seed, pretrain_source):
            files += [f for f in (job.metrics, job.settings) if f]
    return list(dict.fromkeys(files))


def released_jobs(target: str, scale: str, datasets: dict, data_root: str) -> list[Job]:
    """A `<paper>_released` target's jobs: fetch each checkpoint (and convert a segmentor), evaluate it, then
    gather the table."""
    found = []
    for ckpt in released.targets()[target]:
        data = released.dataset_of(ckpt, scale, datasets)
        found.append(Job("fetch_weights", released.weights_path(data_root, ckpt.paper, ckpt.filename)))
        if ckpt.kind == "segmentor":
            found.append(Job("convert_released", released.model_dir(data, ckpt.backbone, ckpt.stem), data,
                             ckpt.backbone, release=ckpt.stem, reads=found[-1].output))
        found.append(Job("evaluate_released", released.evaluate_dir(data, ckpt.backbone, ckpt.stem), data,
                         ckpt.backbone, release=ckpt.stem, reads=found[-1].output))
    return found + [Job("gather_released", paths.table(target, scale))]


def demo_jobs(config: dict, datasets: dict) -> list[Job]:
    """The demo's jobs: the row `demo.row` of table `demo.target` at smoke scale, first seed."""
    return run_jobs(targets.demo_run(config), "smoke", datasets, config["seeds"][0])


def demo_artifacts(config: dict, datasets: dict) -> dict[str, list[str]]:
    """What the demo leaves: the Snakefile's `demo` target and dvc.yaml's demo stage declare the same files."""
    found = demo_jobs(config, datasets)
    return {"checkpoints": [j.output for j in found if j.rule in ("pretrain", "finetune")],
            "metrics": [j.metrics for j in found if j.metrics],
            "settings": [j.settings for j in found if j.settings],
            "reports": [paths.report(paths.DEMO, ext, "smoke") for ext in ("md", "html")]}

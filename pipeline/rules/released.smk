# Released checkpoints (config/released.yaml, pipeline/released.py): `fetch_weights` downloads (or links) a file
# and checks it against the published hash or config/released.lock; `evaluate_released` measures an ImageNet
# classifier with its paper's test protocol, or a whole segmentor (`convert_released`: the mmseg file in this
# pipeline's layout) with its recipe's ADE20K test; `<paper>_released` gathers a table JSON against the registry
# rows and ends in its report. No training: a few GPU-hours for a paper's releases.

import re
from pathlib import Path

from pipeline import released

RELEASED_TARGETS = released.targets()
EVALUATE_RELEASED_DIR = released.evaluate_dir("{dataset}", "{backbone}", "{release}")
RELEASED_MODEL_DIR = released.model_dir("{dataset}", "{backbone}", "{release}")
_STEMS = {kind: "|".join(sorted({re.escape(c.stem) for c in released.catalogue().values() if c.kind == kind}))
          for kind in released.EVALUATED}


rule fetch_weights:
    output:
        released.weights_path(DATA, "{paper}", "{file}"),
    log:
        "logs/fetch_weights/{paper}/{file}.log",
    wildcard_constraints:
        file="|".join(re.escape(f) for f in released.catalogue()),
    params:
        source=lambda wc: config["released_paths"].get(wc.file, ""),
    shell:
        "{PYTHON:q} -m pipeline.released fetch {wildcards.file:q} --data-root {DATA:q} --source={params.source:q}"
        " {DOWNLOAD_ARGS} --log-file {log:q}"


def _released_ckpt(wildcards):
    return released.by_stem(wildcards.backbone, wildcards.release)


def _released_settings(wildcards, job):
    return released.settings_doc(_released_ckpt(wildcards), SCALE, config["smoke_profile"], config["smoke"], job)


localrules: resolve_released_settings, resolve_released_model_settings, convert_released


rule resolve_released_settings:
    output:
        paths.settings(EVALUATE_RELEASED_DIR),
    wildcard_constraints:
        dataset="|".join(SCALE_DATASETS),
        release="|".join(_STEMS.values()),
    params:
        settings_sha256=lambda wc: settings.digest(_released_settings(wc, "evaluate")),
    run:
        settings.write(output[0], _released_settings(wildcards, "evaluate"), wildcards.dataset, DATA)


rule resolve_released_model_settings:
    output:
        paths.settings(RELEASED_MODEL_DIR),
    wildcard_constraints:
        dataset="|".join(SCALE_DATASETS),
        release=_STEMS["segmentor"],
    params:
        settings_sha256=lambda wc: settings.digest(_released_settings(wc, "finetune")),
    run:
        settings.write(output[0], _released_settings(wildcards, "finetune"), wildcards.dataset, DATA)


def _fetched(wc):
    ckpt = _released_ckpt(wc)
    return released.weights_path(DATA, ckpt.paper, ckpt.filename)


rule convert_released:
    input:
        settings=paths.settings(RELEASED_MODEL_DIR),
        weights=_fetched,
    output:
        model=paths.output(RELEASED_MODEL_DIR, "convert_released"),
    log:
        "logs/convert_released/{dataset}/{backbone}/{release}.log",
    wildcard_constraints:
        release=_STEMS["segmentor"],
    shell:
        "{PYTHON:q} -m pipeline.released convert --settings {input.settings:q} --weights {input.weights:q}"
        " --output {output.model:q} --log-file {log:q}"


def _evaluated_weights(wc):
    """A classifier is evaluated from the fetched file, a segmentor from its conversion."""
    if _released_ckpt(wc).kind == "segmentor":
        return paths.output(RELEASED_MODEL_DIR.format(**wc), "convert_released")
    return _fetched(wc)


rule evaluate_released:
    input:
        settings=paths.settings(EVALUATE_RELEASED_DIR),
        weights=_evaluated_weights,
        manifest=lambda wc: data_sources.manifest(DATA, wc.dataset),
    output:
        metrics=f"{EVALUATE_RELEASED_DIR}/metrics.json",
    log:
        "logs/evaluate_released/{dataset}/{backbone}/{release}.log",
    wildcard_constraints:
        release="|".join(_STEMS.values()),
    params:
        run_dir=lambda wc, output: str(Path(output.metrics).parent),
    resources:
        **resources_of("evaluate_released"),
    shell:
        "{LAUNCH} --run-dir {params.run_dir:q} --gpus {resources.gpu} --nodes {resources.nodes}"
        " --minutes {resources.runtime} --output {output.metrics:q} --"
        " {PYTHON:q} -m pipeline.released evaluate --settings {input.settings:q} --weights {input.weights:q}"
        " --metrics {output.metrics:q} --log-file {log:q}"


rule gather_released:
    input:
        lambda wc: [f"{released.evaluate_dir(released.dataset_of(c, SCALE, DATASETS), c.backbone, c.stem)}"
                    "/metrics.json" for c in RELEASED_TARGETS[wc.target]],
    output:
        table=paths.table("{target}", SCALE),
        metrics=paths.table_metrics(paths.table("{target}", SCALE)),
    log:
        f"logs/gather_table/{paths.scaled('{target}', SCALE)}.log",
    wildcard_constraints:
        target="|".join(RELEASED_TARGETS),
    params:
        paper=lambda wc: wc.target.removesuffix(released.SUFFIX),
    shell:
        "{PYTHON:q} -m pipeline.released gather --paper {params.paper:q} --scale {SCALE}"
        " --data-root {DATA:q} --out {output.table:q} --log-file {log:q}"


# Fine-tuning from released weights (`pretrain_source: released`): the fetched checkpoint, checked against the
# model and written in the project's layout in place of a pretraining job's output.
rule import_released:
    input:
        lambda wc: released.weights_path(DATA, released.for_backbone(wc.backbone).paper,
                                         released.for_backbone(wc.backbone).filename),
    output:
        model=paths.output(paths.pretrain_dir("{dataset}", "{backbone}", released.SOURCE, "{seed}"), "import_released"),
    log:
        paths.log("import_released", paths.pretrain_dir("{dataset}", "{backbone}", released.SOURCE, "{seed}")),
    wildcard_constraints:
        dataset="|".join(SCALE_DATASETS),
        backbone="|".join(sorted({c.backbone for c in released.catalogue().values()}, key=len, reverse=True)),
    shell:
        "{PYTHON:q} -m pipeline.weights --backbone {wildcards.backbone} --source={input:q} --output {output.model:q}"
        " --log-file {log:q}"


_WITHOUT = released.without_release({r.backbone for e in EXPERIMENTS.values() for r in e.runs
                                     if r.kind == "finetune"}, config["pretrain_source"])
if _WITHOUT:
    logger.warning(f"pretrain_source: no released checkpoint for {', '.join(_WITHOUT)}; their rows use this "
                   "pipeline's pretraining (or supplied weights)")


for _target in RELEASED_TARGETS:
    rule:
        name: _target
        input: [paths.report(_target, ext, SCALE) for ext in ("md", "html")]

# ImageNet pretraining, one job per backbone, recipe and seed: its settings file is resolved first, then the
# engine runs from it; resumable state lives in the undeclared state/ dir beside the outputs. Baselines whose
# ImageNet weights the user supplies are imported, not trained.

PRETRAIN_DIR = paths.pretrain_dir("{dataset}", "{backbone}", "{recipe}", "{seed}")


rule resolve_pretrain_settings:
    input:
        manifest=data_sources.manifest(DATA, "{dataset}"),
    output:
        paths.settings(PRETRAIN_DIR),
    wildcard_constraints:
        dataset="|".join(SCALE_DATASETS),
        recipe="|".join(recipes.load("pretrain")),
    params:
        settings_sha256=settings_digest("pretrain"),
    localrule: True
    run:
        write_settings("pretrain", output, wildcards)


rule pretrain:
    input:
        settings=paths.settings(PRETRAIN_DIR),
    output:
        model=paths.output(PRETRAIN_DIR, "pretrain"),
        metrics=f"{PRETRAIN_DIR}/{paths.PRETRAIN_METRICS}",
    log:
        paths.log("pretrain", PRETRAIN_DIR),
    params:
        work_dir=lambda wc: paths.state(PRETRAIN_DIR.format(**wc)),
        run_dir=lambda wc: PRETRAIN_DIR.format(**wc),
    resources:
        **resources_of("pretrain"),
    shell:
        "{LAUNCH} --run-dir {params.run_dir:q} --gpus {resources.gpu} --nodes {resources.nodes}"
        " --minutes {resources.runtime} --output {output.model:q} --output {output.metrics:q} --"
        " {PYTHON:q} -m pipeline.pretrain --settings {input.settings:q} --work-dir {params.work_dir:q}"
        " --output {output.model:q} --metrics {output.metrics:q} --log-file {log:q}"


IMPORT_DIR = paths.pretrain_dir("{dataset}", "{backbone}", targets.SUPPLIED, "{seed}")


rule import_weights:
    output:
        model=paths.output(IMPORT_DIR, "import_weights"),
    log:
        paths.log("import_weights", IMPORT_DIR),
    wildcard_constraints:
        dataset="|".join(SCALE_DATASETS),
    params:
        source=lambda wc: config["pretrained_weights"].get(wc.backbone, ""),
        smoke="--allow-random" if SCALE == "smoke" else "",
    shell:
        "{PYTHON:q} -m pipeline.weights --backbone {wildcards.backbone} --source={params.source:q}"
        " --output {output.model:q} --seed {wildcards.seed} {params.smoke} --log-file {log:q}"

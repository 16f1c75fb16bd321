# detectron2 fine-tuning and evaluation, one job per dataset, task (framework), backbone, recipe, schedule and
# seed, each run from its resolved settings file. The ImageNet weights come from the pretraining recipe the
# fine-tuning recipe names (the project's) or the backbone family's, are user-supplied, or are the authors' released checkpoint (`pretrain_source: released`).
# Fine-tuning runs one task per node, which starts a process per GPU (detectron2's launch, pipeline/finetune.py).

from pipeline.tasks import TASKS

JOB = ("{dataset}", "{task}", "{backbone}", "{recipe}", "{schedule}", "{seed}")
FINETUNE_DIR = paths.dense_dir("finetune", *JOB)
EVALUATE_DIR = paths.dense_dir("evaluate", *JOB)


def pretrained_checkpoint(wildcards) -> str:
    """The ImageNet checkpoint a fine-tuning job starts from (same seed, same scale): its recipe's pretraining,
    supplied weights, or the released checkpoint (config `pretrain_source`)."""
    backbone = wildcards.backbone
    source = jobs.weights_source(backbone, targets.finetune_pretrain(backbone, wildcards.recipe),
                                 config["pretrain_source"])
    return jobs.imagenet_job(backbone, source, SCALE, DATASETS, wildcards.seed).output


rule resolve_dense_settings:
    input:
        manifest=data_sources.manifest(DATA, "{dataset}"),
    output:
        paths.settings(paths.dense_dir("{stage}", *JOB)),
    wildcard_constraints:
        stage="finetune|evaluate",
        dataset="|".join(SCALE_DATASETS),
        task="|".join(TASKS),
    params:
        settings_sha256=settings_digest(lambda wc: wc.stage),
    localrule: True
    run:
        write_settings(wildcards.stage, output, wildcards)


rule finetune:
    input:
        settings=paths.settings(FINETUNE_DIR),
        pretrained=pretrained_checkpoint,
    output:
        model=paths.output(FINETUNE_DIR, "finetune"),
    log:
        paths.log("finetune", FINETUNE_DIR),
    params:
        work_dir=lambda wc: paths.state(FINETUNE_DIR.format(**wc)),
        run_dir=lambda wc: FINETUNE_DIR.format(**wc),
    resources:
        **resources_of("finetune"),
    shell:
        "{LAUNCH} --run-dir {params.run_dir:q} --gpus {resources.gpu} --nodes {resources.nodes} --tasks-per-node 1"
        " --minutes {resources.runtime} --output {output.model:q} --"
        " {PYTHON:q} -m pipeline.finetune --settings {input.settings:q} --pretrained {input.pretrained:q}"
        " --gpus {resources.gpu} --work-dir {params.work_dir:q} --output {output.model:q} --log-file {log:q}"


rule evaluate:
    input:
        settings=paths.settings(EVALUATE_DIR),
        model=paths.output(FINETUNE_DIR, "finetune"),
    output:
        metrics=paths.output(EVALUATE_DIR, "evaluate"),
    log:
        paths.log("evaluate", EVALUATE_DIR),
    params:
        work_dir=lambda wc: f"{EVALUATE_DIR.format(**wc)}/eval",
        run_dir=lambda wc: EVALUATE_DIR.format(**wc),
    resources:
        **resources_of("evaluate"),
    shell:
        "{LAUNCH} --run-dir {params.run_dir:q} --gpus {resources.gpu} --nodes {resources.nodes} --tasks-per-node 1"
        " --minutes {resources.runtime} --output {output.metrics:q} --"
        " {PYTHON:q} -m pipeline.evaluate --settings {input.settings:q} --checkpoint {input.model:q}"
        " --metrics {output.metrics:q} --work-dir {params.work_dir:q} --log-file {log:q}"

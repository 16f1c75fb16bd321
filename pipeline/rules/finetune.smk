# detectron2 fine-tuning and evaluation, one job per dataset, task (framework), backbone, recipe, schedule and
# seed. The ImageNet weights come from the backbone family's pretraining recipe, or are user-supplied.
# Fine-tuning runs one task per node, which starts a process per GPU (detectron2's launch, pipeline/finetune.py).


def finetune_settings(wildcards) -> str:
    if wildcards.recipe == "demo":
        return experiments.flags({"task": wildcards.task, **DEMO["finetune"]})
    settings = experiments.finetune_settings(wildcards.recipe, wildcards.backbone, wildcards.schedule,
                                             scale_of(wildcards), config["smoke"]["finetune"], int(wildcards.seed))
    if settings["task"] != wildcards.task:
        raise WorkflowError(f"recipe {wildcards.recipe} trains {settings['task']}, not {wildcards.task}")
    return experiments.flags(settings)


def pretrained_checkpoint(wildcards) -> str:
    """The ImageNet checkpoint a fine-tuning job starts from (same seed, same scale)."""
    imagenet = experiments.dataset("imagenet", scale_of(wildcards), DATASETS)
    recipe = "demo" if wildcards.recipe == "demo" else experiments.default_pretrain(wildcards.backbone)
    return f"{experiments.pretrain_dir(imagenet, wildcards.backbone, recipe, wildcards.seed)}/model.pth"


JOB = ("{dataset}", "{task}", "{backbone}", "{recipe}", "{schedule}", "{seed}")
FINETUNE_DIR = experiments.dense_dir("finetune", *JOB)
EVALUATE_DIR = experiments.dense_dir("evaluate", *JOB)


rule finetune:
    input:
        manifest=f"{DATA}/{{dataset}}.manifest.json",
        pretrained=pretrained_checkpoint,
    output:
        model=f"{FINETUNE_DIR}/model_final.pth",
    log:
        "logs/finetune/{dataset}/{task}/{backbone}/{recipe}/{schedule}/seed{seed}.log",
    wildcard_constraints:
        task="|".join(TASKS),
    params:
        settings=finetune_settings,
        work_dir=lambda wc: f"{FINETUNE_DIR.format(**wc)}/state",
        run_dir=lambda wc: FINETUNE_DIR.format(**wc),
    resources:
        **resources_of("finetune"),
    shell:
        "{LAUNCH} --run-dir {params.run_dir} --gpus {resources.gpu} --nodes {resources.nodes} --tasks-per-node 1"
        " --minutes {resources.runtime} --output {output.model} --"
        " {PYTHON} -m pipeline.finetune --backbone {wildcards.backbone} --pretrained {input.pretrained}"
        " --gpus {resources.gpu} --data {DATA}/{wildcards.dataset} --work-dir {params.work_dir} --output {output.model}"
        " --log-file {log} {params.settings}"


def evaluate_settings(wildcards) -> str:
    if wildcards.recipe == "demo":
        return experiments.flags(DEMO["evaluate"])
    return experiments.flags(experiments.evaluate_settings(wildcards.recipe, wildcards.backbone, wildcards.schedule,
                                                           scale_of(wildcards), config["smoke"]["evaluate"]))


rule evaluate:
    input:
        manifest=f"{DATA}/{{dataset}}.manifest.json",
        model=f"{FINETUNE_DIR}/model_final.pth",
    output:
        metrics=f"{EVALUATE_DIR}/metrics.json",
    log:
        "logs/evaluate/{dataset}/{task}/{backbone}/{recipe}/{schedule}/seed{seed}.log",
    params:
        settings=evaluate_settings,
        work_dir=lambda wc: f"{EVALUATE_DIR.format(**wc)}/eval",
        run_dir=lambda wc: EVALUATE_DIR.format(**wc),
    resources:
        **resources_of("evaluate"),
    shell:
        "{LAUNCH} --run-dir {params.run_dir} --gpus {resources.gpu} --nodes {resources.nodes} --tasks-per-node 1"
        " --minutes {resources.runtime} --output {output.metrics} --"
        " {PYTHON} -m pipeline.evaluate --checkpoint {input.model} --data {DATA}/{wildcards.dataset}"
        " --metrics {output.metrics} --work-dir {params.work_dir} --log-file {log} {params.settings}"

# ImageNet pretraining, one job per backbone, recipe and seed; resumable state lives in the undeclared state/
# dir beside the outputs. Baselines whose ImageNet weights the user supplies are imported, not trained.


PRETRAIN_DIR = experiments.pretrain_dir("{dataset}", "{backbone}", "{recipe}", "{seed}")


def pretrain_settings(wildcards) -> str:
    if wildcards.recipe == "demo":
        return experiments.flags(DEMO["pretrain"])
    return experiments.flags(experiments.pretrain_settings(wildcards.recipe, wildcards.backbone, scale_of(wildcards),
                                                           config["smoke"]["pretrain"], int(wildcards.seed)))


rule pretrain:
    input:
        manifest=f"{DATA}/{{dataset}}.manifest.json",
    output:
        model=f"{PRETRAIN_DIR}/model.pth",
        metrics=f"{PRETRAIN_DIR}/metrics.json",
    log:
        "logs/pretrain/{dataset}/{backbone}/{recipe}/seed{seed}.log",
    wildcard_constraints:
        recipe="|".join([*recipes.load("pretrain"), "demo"]),
    params:
        settings=pretrain_settings,
        work_dir=lambda wc: f"{PRETRAIN_DIR.format(**wc)}/state",
        run_dir=lambda wc: PRETRAIN_DIR.format(**wc),
    resources:
        **resources_of("pretrain"),
    shell:
        "{LAUNCH} --run-dir {params.run_dir} --gpus {resources.gpu} --nodes {resources.nodes}"
        " --minutes {resources.runtime} --output {output.model} --output {output.metrics} --"
        " {PYTHON} -m pipeline.pretrain --model {wildcards.backbone} --data {DATA}/{wildcards.dataset}"
        " --work-dir {params.work_dir} --output {output.model} --metrics {output.metrics}"
        " --log-file {log} {params.settings}"


rule import_weights:
    output:
        model=f"{experiments.pretrain_dir('{dataset}', '{backbone}', experiments.SUPPLIED, '{seed}')}/model.pth",
    log:
        "logs/import_weights/{dataset}/{backbone}/seed{seed}.log",
    params:
        source=lambda wc: config["pretrained_weights"].get(wc.backbone, ""),
        smoke=lambda wc: "--allow-random" if scale_of(wc) == "smoke" else "",
    shell:
        "{PYTHON} -m pipeline.weights --backbone {wildcards.backbone} --source '{params.source}'"
        " --output {output.model} --seed {wildcards.seed} {params.smoke} --log-file {log}"

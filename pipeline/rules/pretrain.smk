# ImageNet pretraining, one job per backbone, recipe and seed; resumable state lives in the undeclared state/
# dir beside the outputs. Baselines whose ImageNet weights the user supplies are imported, not trained.


def pretrain_settings(wildcards) -> str:
    if wildcards.recipe == "demo":
        return cli_args(DEMO["pretrain"])
    scale = "smoke" if DATASETS[wildcards.dataset].embedded else "full"
    return experiments.flags(experiments.pretrain_settings(wildcards.recipe, wildcards.backbone, scale,
                                                           config["smoke"]["pretrain"], int(wildcards.seed)))


def pretrain_resources(wildcards) -> dict:
    if wildcards.recipe == "demo" or DATASETS[wildcards.dataset].embedded:
        return SMOKE_RESOURCES
    return recipes.resources("pretrain", wildcards.recipe, wildcards.backbone)


rule pretrain:
    input:
        manifest=f"{DATA}/{{dataset}}.manifest.json",
    output:
        model="results/pretrain/{dataset}/{backbone}/{recipe}/seed{seed}/model.pth",
        metrics="results/pretrain/{dataset}/{backbone}/{recipe}/seed{seed}/metrics.json",
    log:
        "logs/pretrain/{dataset}/{backbone}/{recipe}/seed{seed}.log",
    wildcard_constraints:
        recipe="|".join([*recipes.load("pretrain"), "demo"]),
    params:
        settings=pretrain_settings,
        work_dir=lambda wc: f"results/pretrain/{wc.dataset}/{wc.backbone}/{wc.recipe}/seed{wc.seed}/state",
    resources:
        gpu=lambda wc: pretrain_resources(wc)["gpus"],
        nodes=lambda wc: pretrain_resources(wc)["nodes"],
        runtime=lambda wc: pretrain_resources(wc)["minutes"],
    shell:
        "{PYTHON} -m pipeline.pretrain --model {wildcards.backbone} --data {DATA}/{wildcards.dataset}"
        " --work-dir {params.work_dir} --output {output.model} --metrics {output.metrics}"
        " --log {log} {params.settings}"


rule import_weights:
    output:
        model="results/pretrain/{dataset}/{backbone}/supplied/seed{seed}/model.pth",
    log:
        "logs/import_weights/{dataset}/{backbone}/seed{seed}.log",
    params:
        source=lambda wc: config["pretrained_weights"].get(wc.backbone, ""),
        smoke=lambda wc: "--allow-random" if DATASETS[wc.dataset].embedded else "",
    shell:
        "{PYTHON} -m pipeline.weights --backbone {wildcards.backbone} --source '{params.source}'"
        " --output {output.model} --seed {wildcards.seed} {params.smoke} --log {log}"

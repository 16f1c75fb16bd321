# ImageNet pretraining. Resumable state lives in the undeclared state/ dir beside the outputs.


def pretrain_settings(wildcards):
    if wildcards.recipe != "demo":
        raise WorkflowError(f"unknown pretraining recipe {wildcards.recipe!r}; valid recipes: demo")
    return DEMO["pretrain"]


rule pretrain:
    input:
        manifest=f"{DATA}/{{dataset}}.manifest.json",
    output:
        model="results/pretrain/{dataset}/{backbone}/{recipe}/model.pth",
        metrics="results/pretrain/{dataset}/{backbone}/{recipe}/metrics.json",
    log:
        "logs/pretrain/{dataset}/{backbone}/{recipe}.log",
    params:
        settings=lambda wc: cli_args(pretrain_settings(wc)),
        work_dir=lambda wc: f"results/pretrain/{wc.dataset}/{wc.backbone}/{wc.recipe}/state",
    shell:
        "{PYTHON} -m pipeline.pretrain --model {wildcards.backbone} --data {DATA}/{wildcards.dataset}"
        " --work-dir {params.work_dir} --output {output.model} --metrics {output.metrics}"
        " --log {log} {params.settings}"

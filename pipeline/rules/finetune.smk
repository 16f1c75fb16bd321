# detectron2 fine-tuning and evaluation on COCO-format data.


def finetune_settings(wildcards):
    if wildcards.schedule != "demo":
        raise WorkflowError(f"unknown fine-tuning schedule {wildcards.schedule!r}; valid schedules: demo")
    return DEMO["finetune"]


def pretrained_checkpoint(wildcards):
    """The ImageNet checkpoint a fine-tuning schedule starts from."""
    finetune_settings(wildcards)
    return f"results/pretrain/imagenet-embedded/{wildcards.backbone}/demo/model.pth"


rule finetune:
    input:
        manifest=f"{DATA}/{{dataset}}.manifest.json",
        pretrained=pretrained_checkpoint,
    output:
        model="results/finetune/{dataset}/mask_rcnn/{backbone}/{schedule}/model_final.pth",
    log:
        "logs/finetune/{dataset}/mask_rcnn/{backbone}/{schedule}.log",
    params:
        settings=lambda wc: cli_args(finetune_settings(wc)),
        work_dir=lambda wc: f"results/finetune/{wc.dataset}/mask_rcnn/{wc.backbone}/{wc.schedule}/state",
    shell:
        "{PYTHON} -m pipeline.finetune --backbone {wildcards.backbone} --pretrained {input.pretrained}"
        " --coco {DATA}/{wildcards.dataset} --work-dir {params.work_dir} --output {output.model}"
        " --log {log} {params.settings}"


rule evaluate:
    input:
        manifest=f"{DATA}/{{dataset}}.manifest.json",
        model="results/finetune/{dataset}/mask_rcnn/{backbone}/{schedule}/model_final.pth",
    output:
        metrics="results/evaluate/{dataset}/mask_rcnn/{backbone}/{schedule}/metrics.json",
    log:
        "logs/evaluate/{dataset}/mask_rcnn/{backbone}/{schedule}.log",
    params:
        settings=lambda wc: cli_args(DEMO["evaluate"]) if wc.schedule == "demo" else "",
        work_dir=lambda wc: f"results/evaluate/{wc.dataset}/mask_rcnn/{wc.backbone}/{wc.schedule}/coco_eval",
    shell:
        "{PYTHON} -m pipeline.evaluate --checkpoint {input.model} --coco {DATA}/{wildcards.dataset}"
        " --metrics {output.metrics} --work-dir {params.work_dir} --log {log} {params.settings}"

# backbone-repro: the only DAG. Data -> ImageNet pretraining -> detectron2 fine-tuning -> evaluation -> reports.
#   snakemake --profile profiles/local demo     the whole pipeline at smoke scale on embedded data
# Rule files live in pipeline/rules/, one per stage.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "pipeline/rules/common.smk"
include: "pipeline/rules/data.smk"
include: "pipeline/rules/pretrain.smk"
include: "pipeline/rules/finetune.smk"
include: "pipeline/rules/report.smk"


rule demo:
    input:
        *DEMO_ARTIFACTS["checkpoints"],
        *DEMO_ARTIFACTS["metrics"],
        *DEMO_ARTIFACTS["reports"],

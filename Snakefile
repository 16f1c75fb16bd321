# backbone-repro: the only DAG. Data -> ImageNet pretraining -> detectron2 fine-tuning -> evaluation -> tables
# and reports.
#   snakemake --profile profiles/local demo --config scale=smoke smoke_profile=demo
#                                                                 the whole pipeline at smoke scale on embedded data
#   snakemake --profile profiles/local pvt_table4                 one paper table (config/papers/*.yaml `target`)
#   snakemake --profile profiles/local table4 --config paper=pvt  the same, by the paper's table number
#   snakemake ... --config scale=smoke                             every job shrunk onto the embedded data
# Rule files live in pipeline/rules/, one per stage.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "pipeline/rules/common.smk"
include: "pipeline/rules/data.smk"
include: "pipeline/rules/pretrain.smk"
include: "pipeline/rules/finetune.smk"
include: "pipeline/rules/report.smk"
include: "pipeline/rules/tables.smk"


rule demo:
    input:
        demo_inputs,

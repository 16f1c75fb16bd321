# backbone-repro: the only DAG. Data -> ImageNet pretraining -> detectron2 fine-tuning -> evaluation -> tables
# and reports.
#   snakemake --profile profiles/local demo --config scale=smoke smoke_profile=demo
#                                                                 the whole pipeline at smoke scale on embedded data
#   snakemake --profile profiles/local pvt_table4                 one paper table (config/papers/*.yaml `target`)
#   snakemake --profile profiles/local table4 --config paper=pvt  the same, by the paper's table number
#   snakemake ... --config scale=smoke                             every job shrunk onto the embedded data
# Rule files live in pipeline/rules/, one per stage.

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from pipeline import registry

min_version("9.0")

# Snakemake's own message for a YAML error names no line; this one names the file and line.
try:
    registry.load_yaml(registry.CONFIG_DIR / "config.yaml")
except registry.ConfigError as e:
    raise WorkflowError(str(e)) from None


configfile: "config/config.yaml"


include: "pipeline/rules/common.smk"
include: "pipeline/rules/data.smk"
include: "pipeline/rules/pretrain.smk"
include: "pipeline/rules/finetune.smk"
include: "pipeline/rules/released.smk"
include: "pipeline/rules/report.smk"
include: "pipeline/rules/tables.smk"


rule demo:
    input:
        demo_inputs,

# Reports: measured numbers beside the papers' numbers, with provenance.
#
# The demo is the row `demo.row` of table `demo.target` (config/config.yaml) at smoke scale, with the smoke
# profile `demo`: `make demo` runs `snakemake demo --config scale=smoke smoke_profile=demo`.

DEMO_JOBS = jobs.demo_jobs(config, DATASETS)
DEMO_ARTIFACTS = jobs.demo_artifacts(config, DATASETS)
DEMO_SCALE_LINE = ("the demo runs at smoke scale with the demo profile: add --config scale=smoke smoke_profile=demo "
                   "(make demo does)")


def demo_inputs(wildcards):
    """The demo's artifacts, once the config says smoke scale with the demo profile."""
    if SCALE != "smoke" or config["smoke_profile"] != "demo":
        raise WorkflowError(DEMO_SCALE_LINE)
    return [f for files in DEMO_ARTIFACTS.values() for f in files]


rule report_demo:
    input:
        pretrain=next(j.metrics for j in DEMO_JOBS if j.rule == "pretrain"),
        evaluation=next(j.metrics for j in DEMO_JOBS if j.rule == "evaluate"),
        settings=DEMO_ARTIFACTS["settings"],
        ade20k=data_sources.manifest(DATA, "ade20k-embedded"),
    output:
        paths.DEMO_REPORT,
    log:
        "logs/report/demo.log",
    shell:
        "{PYTHON:q} -m pipeline.report --pretrain-metrics {input.pretrain:q} --eval-metrics {input.evaluation:q}"
        " --settings {input.settings:q} --out {output:q} > {log:q} 2>&1"

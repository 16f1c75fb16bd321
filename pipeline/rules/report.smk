# Reports: measured numbers beside the papers' numbers, with provenance.

from pipeline.dvcgen import demo_artifacts

# The demo's final artifacts; dvc.yaml declares the same list (pipeline/dvcgen.py).
DEMO_ARTIFACTS = demo_artifacts(config)


rule report_demo:
    input:
        pretrain=DEMO_ARTIFACTS["metrics"][0],
        evaluation=DEMO_ARTIFACTS["metrics"][1],
        ade20k=f"{DATA}/ade20k-embedded.manifest.json",
    output:
        DEMO_ARTIFACTS["reports"][0],
    log:
        "logs/report/demo.log",
    shell:
        "{PYTHON} -m pipeline.report --pretrain-metrics {input.pretrain} --eval-metrics {input.evaluation}"
        " --out {output} > {log} 2>&1"

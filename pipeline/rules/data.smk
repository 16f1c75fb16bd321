# Datasets. Downstream rules depend on a dataset's manifest, never on its files.


rule prepare_embedded:
    output:
        manifest=f"{DATA}/{{dataset}}-embedded.manifest.json",
    log:
        "logs/prepare/{dataset}-embedded.log",
    wildcard_constraints:
        dataset="imagenet|coco|ade20k",
    shell:
        "{PYTHON} -m pipeline.data.embedded {wildcards.dataset} --out {DATA}/{wildcards.dataset}-embedded"
        " --manifest {output.manifest} > {log} 2>&1"

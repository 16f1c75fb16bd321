# Reports (pipeline/report.py): every table target's measured numbers beside the paper's, with Δ, verdicts,
# deviations, provenance and plots, as reports/<target>.md and a self-contained reports/<target>.html; each
# report job also rewrites the index (reports/index.html, reports/README.md). `snakemake --report` shows the
# HTML pages, filed per paper.
#
# The demo is the row `demo.row` of table `demo.target` (config/config.yaml) at smoke scale, with the smoke
# profile `demo`: `make demo` runs `snakemake demo --config scale=smoke smoke_profile=demo`, and its report is
# reports/smoke/demo.{md,html}, written by the same code from its one-row table.

DEMO_JOBS = jobs.demo_jobs(config, DATASETS)
DEMO_ARTIFACTS = jobs.demo_artifacts(config, DATASETS)
DEMO_SCALE_LINE = ("the demo runs at smoke scale with the demo profile: add --config scale=smoke smoke_profile=demo "
                   "(make demo does)")
REPORT_CAPTION = "report_caption.rst"  # relative to this file


def demo_inputs(wildcards):
    """The demo's artifacts and every embedded dataset prepared, once the config says smoke scale with the demo
    profile."""
    if SCALE != "smoke" or config["smoke_profile"] != "demo":
        raise WorkflowError(DEMO_SCALE_LINE)
    embedded = [data_sources.manifest(DATA, name) for name, d in DATASETS.items() if d.embedded]
    return [f for files in DEMO_ARTIFACTS.values() for f in files] + embedded


rule gather_demo:
    input:
        [f for job in DEMO_JOBS for f in (job.metrics, job.settings) if f],
    output:
        table=paths.table(paths.DEMO, "smoke"),
        metrics=paths.table_metrics(paths.table(paths.DEMO, "smoke")),
    log:
        f"logs/gather_table/{paths.scaled(paths.DEMO, 'smoke')}.log",
    params:
        target=config["demo"]["target"],
        row=DEMO_RUN.row,
        seed=SEEDS[0],
    shell:
        "{PYTHON:q} -m pipeline.gather --target {params.target:q} --rows {params.row:q} --name {paths.DEMO}"
        " --scale smoke --seeds {params.seed} --data-root {DATA:q} --out {output.table:q} --log-file {log:q}"


for _paper in registry.PAPERS:
    rule:
        name: f"report_{_paper}"
        input:
            table=paths.table("{name}", SCALE),
        output:
            md=paths.report("{name}", "md", SCALE),
            html=report(paths.report("{name}", "html", SCALE), category=registry.paper(_paper)["name"],
                        caption=REPORT_CAPTION),
        log:
            f"logs/report/{paths.scaled('{name}', SCALE)}.log",
        wildcard_constraints:
            name="|".join([t for t, e in EXPERIMENTS.items() if e.paper == _paper]
                          + [t for t in RELEASED_TARGETS if t.startswith(f"{_paper}{released.SUFFIX}")]
                          + ([paths.DEMO] if _paper == DEMO_RUN.paper else [])),
        shell:
            "{PYTHON:q} -m pipeline report --table {input.table:q} --log-file {log:q}"

# Paper tables (config/papers/*.yaml `target`): `gather_table` collects a table's rows into
# results/tables/<target>.json, which its report rule (report.smk) reads; `<target>` (e.g. pvt_table4,
# hornet_coco_cascade) asks for the report, `table<N>` means
# the table numbered N of the paper in config, and `all` every reproducible table. What each name means comes
# from pipeline/targets.py, which `python -m pipeline plan` reads too.


rule gather_table:
    input:
        lambda wc: jobs.table_inputs(wc.target, SCALE, DATASETS, jobs.table_seeds(wc.target, config),
                                     config["pretrain_source"]),
    output:
        table=paths.table("{target}", SCALE),
        metrics=paths.table_metrics(paths.table("{target}", SCALE)),
    log:
        f"logs/gather_table/{paths.scaled('{target}', SCALE)}.log",
    wildcard_constraints:
        target="|".join(targets.reproducible()),
    params:
        seeds=lambda wc: ",".join(map(str, jobs.table_seeds(wc.target, config))),
        source=json.dumps(config["pretrain_source"]),
    shell:
        "{PYTHON:q} -m pipeline.gather --target {wildcards.target} --scale {SCALE} --seeds {params.seeds}"
        " --pretrain-source {params.source:q} --data-root {DATA:q} --out {output.table:q} --log-file {log:q}"


def _tables(name):
    """The table files behind a target name; its one-line error when there are none."""
    def inputs(wildcards):
        try:
            found = targets.resolve(name, config["paper"])
        except registry.ConfigError as e:
            raise WorkflowError(str(e)) from None
        for exp in found:
            if name.startswith("table") and not exp.verified:
                logger.warning(targets.unverified_number_line(config["paper"], exp.number, exp))
        return [paths.report(e.target, ext, SCALE) for e in found for ext in ("md", "html")]
    return inputs


for _name in [*EXPERIMENTS, *(f"table{n}" for n in targets.numbered(config["paper"])), "all"]:
    rule:
        name: _name
        input: _tables(_name)


def _unknown_target(wildcards):
    raise WorkflowError(targets.unknown_target(wildcards.name, config["paper"]))


# A bare name that is no rule (`pvt_table12`) reaches this rule, which stops with one line listing the targets.
rule reject_target:
    input: _unknown_target
    output: "{name}"
    wildcard_constraints:
        name=r"[A-Za-z0-9_]+",

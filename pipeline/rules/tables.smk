# Paper tables (config/papers/*.yaml `target`): `gather_table` collects a table's rows into
# results/tables/<target>.json; `<target>` (e.g. pvt_table4, hornet_coco_cascade) asks for it, `table<N>` means
# the table numbered N of the paper in config, and `all` every reproducible table.


rule gather_table:
    input:
        lambda wc: experiments.table_inputs(wc.target, SCALE, DATASETS, SEEDS),
    output:
        "results/tables/{target}.json",
    log:
        "logs/gather_table/{target}.log",
    wildcard_constraints:
        target="|".join(experiments.reproducible()),
    params:
        seeds=",".join(map(str, SEEDS)),
    shell:
        "{PYTHON} -m pipeline.tables --target {wildcards.target} --scale {SCALE} --seeds {params.seeds}"
        " --data-root {DATA} --out {output} --log-file {log}"


def _not_reproduced(target):
    def fail(wildcards):
        exp = EXPERIMENTS[target]
        raise WorkflowError(f"{target} ({exp.paper} {exp.title}) is not reproduced: {exp.not_reproduced}")
    return fail


for _target, _exp in EXPERIMENTS.items():
    rule:
        name: _target
        input: experiments.table_path(_target) if _target in experiments.reproducible() else _not_reproduced(_target)


def _numbered(paper, number, found):
    def inputs(wildcards):
        for e in found:
            if not e.verified:
                logger.warning(f"table{number} of {paper} is taken to be {e.target} ({e.title}); that table "
                               f"number is not verified: {e.number_note}")
            if e.not_reproduced:
                raise WorkflowError(f"table{number} of {paper} ({e.target}) is not reproduced: {e.not_reproduced}")
        return [experiments.table_path(e.target) for e in found]
    return inputs


for _number, _found in experiments.numbered(config["paper"]).items():
    rule:
        name: f"table{_number}"
        input: _numbered(config["paper"], _number, _found)


rule all:
    input:
        [experiments.table_path(t) for t in experiments.reproducible()],


def _unknown_target(wildcards):
    raise WorkflowError(experiments.unknown_target(wildcards.name, config["paper"]))


# A bare name that is no rule (`pvt_table12`) reaches this rule, which stops with one line listing the targets.
rule reject_target:
    input: _unknown_target
    output: "{name}"
    wildcard_constraints:
        name=r"[A-Za-z0-9_]+",

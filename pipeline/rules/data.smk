# Datasets (config/datasets.yaml): download -> verify -> extract, one job per archive and step, then one prepare
# job per dataset. Embedded demo sets are first published as their official archives. Downstream rules depend
# on a dataset's manifest, never on its files; archives and trees stay out of the DVC cache.

import re
import shlex

from pipeline.data import sources as data_sources

FILENAMES = sorted({s.filename for d in DATASETS.values() for s in d.sources.values()})


# Every value quoted: the config may hold anything.
DOWNLOAD_ARGS = shlex.join(["--timeout", str(config["download"]["timeout_s"]),
                            "--retries", str(config["download"]["retries"])])


def _alternation(names):
    return "|".join(re.escape(n) for n in names)


def _archive_of(wildcards) -> str:
    """The archive file an extraction folder (its stem) comes from."""
    ds = DATASETS[wildcards.dataset]
    return next(s.filename for s in ds.sources.values() if data_sources.stem(s.filename) == wildcards.stem)


def _published_sums(wildcards):
    ds = DATASETS[wildcards.dataset]
    return [f"{data_sources.published(DATA, ds.name)}/SHA256SUMS"] if ds.embedded else []


def _extracted_markers(wildcards):
    ds = DATASETS[wildcards.dataset]
    return [f"{data_sources.extracted(DATA, ds.name, data_sources.stem(s.filename))}/{EXTRACTED_MARKER}"
            for s in ds.sources.values()]


wildcard_constraints:
    archive=_alternation(FILENAMES),
    stem=_alternation(data_sources.stem(n) for n in FILENAMES),


rule publish_embedded:
    output:
        f"{data_sources.published(DATA, '{dataset}')}/SHA256SUMS",
    log:
        "logs/publish/{dataset}.log",
    wildcard_constraints:
        dataset=_alternation(n for n, d in DATASETS.items() if d.embedded),
    shell:
        "{PYTHON:q} -m pipeline.data publish {wildcards.dataset:q} --data-root {DATA:q} --log-file {log:q}"


rule download:
    input:
        _published_sums,
    output:
        data_sources.archive(DATA, "{dataset}", "{archive}"),
    log:
        "logs/download/{dataset}/{archive}.log",
    shell:
        "{PYTHON:q} -m pipeline.data download {wildcards.dataset:q} {wildcards.archive:q} --data-root {DATA:q}"
        " --log-file {log:q} {DOWNLOAD_ARGS}"


rule verify:
    input:
        data_sources.archive(DATA, "{dataset}", "{archive}"),
    output:
        data_sources.verified(DATA, "{dataset}", "{archive}"),
    log:
        "logs/verify/{dataset}/{archive}.log",
    shell:
        "{PYTHON:q} -m pipeline.data verify {wildcards.dataset:q} {wildcards.archive:q} --data-root {DATA:q}"
        " --log-file {log:q} {DOWNLOAD_ARGS}"


rule extract:
    input:
        lambda wc: data_sources.verified(DATA, wc.dataset, _archive_of(wc)),
    output:
        f"{data_sources.extracted(DATA, '{dataset}', '{stem}')}/{EXTRACTED_MARKER}",
    log:
        "logs/extract/{dataset}/{stem}.log",
    params:
        archive=_archive_of,
    shell:
        "{PYTHON:q} -m pipeline.data extract {wildcards.dataset:q} {params.archive:q} --data-root {DATA:q}"
        " --log-file {log:q}"


rule prepare:
    input:
        _extracted_markers,
    output:
        manifest=data_sources.manifest(DATA, "{dataset}"),
    log:
        "logs/prepare/{dataset}.log",
    shell:
        "{PYTHON:q} -m pipeline.data prepare {wildcards.dataset:q} --data-root {DATA:q} --log-file {log:q}"

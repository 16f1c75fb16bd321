"""The dataset registry (config/datasets.yaml) and where each preparation step puts its files.

    <data_root>/archives/<dataset>/<file>                 download: the archive (or a link to a local copy)
    <data_root>/archives/<dataset>/<file>.verified.json   verify: the size and hash it was checked against
    <data_root>/extracted/<dataset>/<stem>/               extract: the archive unpacked (".extracted" marker)
    <data_root>/<dataset>/                                prepare: the layout training and detectron2 read
    <data_root>/<dataset>.manifest.json                   prepare: file count, bytes, index checksum
    <data_root>/published/<dataset>/                      publish: embedded archives + SHA256SUMS
    <data_root>/.locks/<dataset>/<file|step>.lock          held by the step working on that archive or dataset

The Snakefile builds its rule patterns with these functions (wildcards pass through), so the two agree.
"""

from __future__ import annotations

import functools
import posixpath
import re
from dataclasses import dataclass

from pipeline import registry
from pipeline.data.download import Source

DATASETS_FILE = registry.CONFIG_DIR / "datasets.yaml"
ARCHIVE_SUFFIX = re.compile(r"\.(zip|tar|tar\.gz|tgz)$")


@dataclass(frozen=True)
class Dataset:
    name: str
    layout: str  # imagenet | coco | ade20k: how it is extracted, prepared and registered
    about: str
    sources: dict[str, Source]  # key (train, val, devkit, ...) -> published file
    expect: dict[str, int]  # published image counts (train, val) and classes, checked after preparation
    embedded: bool

    def source(self, filename: str) -> tuple[str, Source]:
        for key, src in self.sources.items():
            if src.filename == filename:
                return key, src
        raise registry.ConfigError(f"{DATASETS_FILE}: dataset {self.name!r} has no source file {filename!r}; "
                                   f"its files: {', '.join(s.filename for s in self.sources.values())}")


def stem(filename: str) -> str:
    """An archive's name without its archive suffix: the folder it is extracted to."""
    return ARCHIVE_SUFFIX.sub("", filename)


def archive(data_root: str, dataset: str, filename: str) -> str:
    return posixpath.join(data_root, "archives", dataset, filename)


def verified(data_root: str, dataset: str, filename: str) -> str:
    return archive(data_root, dataset, filename) + ".verified.json"


def extracted(data_root: str, dataset: str, archive_stem: str) -> str:
    return posixpath.join(data_root, "extracted", dataset, archive_stem)


def prepared(data_root: str, dataset: str) -> str:
    return posixpath.join(data_root, dataset)


def manifest(data_root: str, dataset: str) -> str:
    return posixpath.join(data_root, f"{dataset}.manifest.json")


def published(data_root: str, dataset: str) -> str:
    return posixpath.join(data_root, "published", dataset)


def lock(data_root: str, dataset: str, name: str) -> str:
    """The lock of the steps on one archive (download, verify, extract) or of a dataset's prepare or publish."""
    return posixpath.join(data_root, ".locks", dataset, f"{name}.lock")


@functools.lru_cache(maxsize=None)
def _load(path: str) -> dict:
    doc = registry.load_yaml(path)
    registry.validate(doc, "datasets.schema.yaml", path)
    return doc["datasets"]


def datasets(data_root: str, path=DATASETS_FILE) -> dict[str, Dataset]:
    """Every dataset in config/datasets.yaml; an embedded set's sources are its base set's files, published
    under `data_root` by `python -m pipeline.data publish`."""
    docs = _load(str(path))
    out = {}
    for name, doc in docs.items():
        if "embedded_from" in doc:
            base = docs.get(doc["embedded_from"])
            if base is None or "sources" not in base or base["layout"] != doc["layout"]:
                raise registry.ConfigError(f"{path}: dataset {name!r}: field 'embedded_from' is "
                                           f"{doc['embedded_from']!r}; it must name a downloaded dataset with "
                                           f"layout {doc['layout']!r}")
            pub = published(data_root, name)
            sources = {key: Source(url=posixpath.join(pub, s["filename"]), filename=s["filename"],
                                   checksums=posixpath.join(pub, "SHA256SUMS"))
                       for key, s in base["sources"].items()}
        else:
            sources = {key: Source(**s, homepage=doc.get("homepage")) for key, s in doc["sources"].items()}
        out[name] = Dataset(name, doc["layout"], doc["about"], sources, doc["expect"], "embedded_from" in doc)
    return out


def dataset(name: str, data_root: str, path=DATASETS_FILE) -> Dataset:
    all_sets = datasets(data_root, path)
    if name not in all_sets:
        raise registry.ConfigError(f"{path}: no dataset {name!r}; datasets: {', '.join(all_sets)}")
    return all_sets[name]

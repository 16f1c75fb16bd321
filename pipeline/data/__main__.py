"""The data steps the Snakefile runs, one command each (datasets and sources: config/datasets.yaml).

    python -m pipeline.data download <dataset> <file>   fetch (resumable) or link a local copy
    python -m pipeline.data verify <dataset> <file>     size + checksum; one fresh re-download on a mismatch
    python -m pipeline.data extract <dataset> <file>    safe, atomic, idempotent unpacking
    python -m pipeline.data prepare <dataset>           the layout training/detectron2 read, and its manifest
    python -m pipeline.data publish <dataset>           pack an embedded set into its official archives

Every command takes --data-root (config.yaml's data_root) and --log-file. A failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from pipeline import registry
from pipeline.data import ade20k, coco, imagenet, sources
from pipeline.data.download import DownloadError, download, verify_or_refetch
from pipeline.data.extract import ExtractError, extract
from pipeline.data.manifest import write_manifest
from pipeline.io import DiskFull, atomic_write_text, waiting_lock
from pipeline.logs import fail, setup_logging

LAYOUTS = {"imagenet": imagenet, "coco": coco, "ade20k": ade20k}


UNVERIFIED = ("%s: NOT VERIFIED: its source says trust: unverified (no published size or checksum), so nothing "
              "shows it is the publisher's file")


def run_download(ds: sources.Dataset, filename: str, root: str, log, **download_kw) -> None:
    _, src = ds.source(filename)
    dest = download(src, Path(sources.archive(root, ds.name, filename)), **download_kw)
    log.info("%s: %s -> %s", ds.name, src.url, dest)


def run_verify(ds: sources.Dataset, filename: str, root: str, log, **download_kw) -> None:
    _, src = ds.source(filename)
    path = Path(sources.archive(root, ds.name, filename))
    if not path.exists():
        raise DownloadError(f"{path}: not downloaded yet; run `python -m pipeline.data download {ds.name} "
                            f"{filename}` first (the Snakefile's download rule does)")
    checked = verify_or_refetch(src, path, **download_kw)
    if src.trust == "unverified":
        log.warning(UNVERIFIED, filename)
    elif checked is None:
        log.warning("%s: the publisher lists no checksum; only the size was checked", filename)
    algorithm, digest = checked or (None, None)
    record = {"file": filename, "url": src.url, "bytes": path.stat().st_size, "algorithm": algorithm,
              "hash": digest, "trust": src.trust or "verified"}
    atomic_write_text(sources.verified(root, ds.name, filename), json.dumps(record, indent=1) + "\n")
    log.info("%s: %s %s verified", filename, algorithm or "size", digest or path.stat().st_size)


def unverified(ds: sources.Dataset, filenames) -> list[str]:
    """The files among `filenames` downloaded on `trust: unverified`, each named in the log."""
    return [name for name in filenames if ds.source(name)[1].trust == "unverified"]


def _stamp(ds: sources.Dataset, root: str, filenames) -> str:
    """What identifies a step's inputs: the verification records of its archives (hash, size, url)."""
    records = []
    for name in filenames:
        path = Path(sources.verified(root, ds.name, name))
        if not path.is_file():
            raise ExtractError(f"{path}: not found; verify the archive first (python -m pipeline.data verify "
                               f"{ds.name} {name})")
        records.append(path.read_bytes())
    return hashlib.sha256(b"".join(records)).hexdigest()


def run_extract(ds: sources.Dataset, filename: str, root: str, log) -> None:
    key, _ = ds.source(filename)
    archive = Path(sources.archive(root, ds.name, filename))
    target = Path(sources.extracted(root, ds.name, sources.stem(filename)))
    extractor = getattr(LAYOUTS[ds.layout], "EXTRACTORS", {}).get(key, extract)
    extractor(archive, target, _stamp(ds, root, [filename]))
    for name in unverified(ds, [filename]):
        log.warning(UNVERIFIED, name)
    log.info("%s -> %s", archive, target)


def run_prepare(ds: sources.Dataset, root: str, log) -> None:
    extracted = {key: Path(sources.extracted(root, ds.name, sources.stem(s.filename)))
                 for key, s in ds.sources.items()}
    stamp = _stamp(ds, root, [s.filename for s in ds.sources.values()])
    prepared = LAYOUTS[ds.layout].prepare(extracted, Path(sources.prepared(root, ds.name)), ds.expect, stamp)
    untrusted = unverified(ds, [s.filename for s in ds.sources.values()])
    for name in untrusted:
        log.warning(UNVERIFIED, name)
    m = write_manifest(prepared, ds.name, Path(sources.manifest(root, ds.name)), unverified=untrusted)
    log.info("%s: %d files, %.1f MB -> %s", ds.name, m["files"], m["bytes"] / 1e6, prepared)


def run_publish(ds: sources.Dataset, root: str, log) -> None:
    from pipeline.data.embedded import publish

    if not ds.embedded:
        raise registry.ConfigError(f"{sources.DATASETS_FILE}: dataset {ds.name!r} is downloaded, not built; "
                                   "only embedded datasets are published")
    out = publish(ds.layout, Path(sources.published(root, ds.name)))
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    log.info("%s: published %s", ds.name, ", ".join(files))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.data", description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["download", "verify", "extract", "prepare", "publish"])
    parser.add_argument("dataset")
    parser.add_argument("file", nargs="?", help="a source's file name (download, verify, extract)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--log-file", help="also write the log to this file")
    parser.add_argument("--timeout", type=float, default=60.0, help="download, verify: seconds without data that "
                        "end an attempt")
    parser.add_argument("--retries", type=int, default=5, help="download, verify: attempts after the first")
    args = parser.parse_args(argv)
    log = setup_logging(args.log_file, "pipeline.data")
    try:
        ds = sources.dataset(args.dataset, args.data_root)
        per_file = args.step in ("download", "verify", "extract")
        if per_file and not args.file:
            parser.error(f"{args.step} needs the source's file name")
        with waiting_lock(sources.lock(args.data_root, ds.name, args.file if per_file else args.step), log):
            if per_file:
                kw = {"timeout": args.timeout, "retries": args.retries} if args.step != "extract" else {}
                globals()[f"run_{args.step}"](ds, args.file, args.data_root, log, **kw)
            else:
                globals()[f"run_{args.step}"](ds, args.data_root, log)
    except (DownloadError, ExtractError, registry.ConfigError, DiskFull) as e:
        return fail(log, str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())

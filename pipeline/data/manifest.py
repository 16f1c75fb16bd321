"""Dataset manifests: file count, total bytes and one checksum over the sorted index (path and size).

Downstream rules depend on a dataset's manifest, never on its (possibly millions of) files; the archives the
files came from were verified against the publishers' checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pipeline.io import atomic_write_text


def build_manifest(root: Path, dataset: str) -> dict:
    entries = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            entries.append((path.relative_to(root).as_posix(), path.stat().st_size))
    entries.sort()
    index = hashlib.sha256("".join(f"{rel}\t{size}\n" for rel, size in entries).encode())
    return {"dataset": dataset, "root": os.fspath(root), "files": len(entries),
            "bytes": sum(size for _, size in entries), "index_sha256": index.hexdigest()}


def index_hash(manifest: str | Path) -> str | None:
    """The index checksum a manifest records; None when there is no manifest (yet)."""
    manifest = Path(manifest)
    return json.loads(manifest.read_text())["index_sha256"] if manifest.exists() else None


def write_manifest(root: Path, dataset: str, out: Path, unverified: list[str] = ()) -> dict:
    """`unverified`: archives downloaded on `trust: unverified`, recorded so that every reader sees it."""
    manifest = build_manifest(root, dataset)
    if unverified:
        manifest["unverified_archives"] = sorted(unverified)
    atomic_write_text(out, json.dumps(manifest, indent=1) + "\n")
    return manifest

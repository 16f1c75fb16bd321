"""Dataset manifests: file count, total bytes and one checksum over the sorted index.

Downstream rules depend on a dataset's manifest, never on its (possibly millions of) files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pipeline.io import atomic_write_text, file_sha256


def build_manifest(root: Path, dataset: str) -> dict:
    index = hashlib.sha256()
    count = total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        size = path.stat().st_size
        digest = file_sha256(path)
        index.update(f"{rel}\t{size}\t{digest}\n".encode())
        count += 1
        total += size
    return {"dataset": dataset, "root": os.fspath(root), "files": count, "bytes": total,
            "index_sha256": index.hexdigest()}


def write_manifest(root: Path, dataset: str, out: Path) -> dict:
    manifest = build_manifest(root, dataset)
    atomic_write_text(out, json.dumps(manifest, indent=1) + "\n")
    return manifest

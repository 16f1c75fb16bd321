"""File helpers: atomic writes (write beside the target, fsync, rename), hashes, resumable work dirs.

Imports nothing heavy: the set-up scripts use it before the environment is complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path in the target's directory; on success it replaces `target` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def _finite_or_none(obj):
    """JSON has no NaN: metrics that are undefined (e.g. AP with no objects of a size) become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def atomic_write_json(target: str | Path, obj) -> None:
    atomic_write_text(target, json.dumps(_finite_or_none(obj), indent=1, sort_keys=False) + "\n")


def atomic_torch_save(obj, target: str | Path) -> None:
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def claim_work_dir(work_dir: str | Path, fingerprint: dict, log) -> bool:
    """Make `work_dir` hold resumable state for exactly this run.

    The run's fingerprint (its settings and input hashes) is kept in `run.json`. When the directory holds
    state from a different run, that state is moved aside (never deleted) and the run starts fresh.
    Returns True when existing state may be resumed.
    """
    work_dir = Path(work_dir)
    stamp = work_dir / "run.json"
    if work_dir.exists() and any(work_dir.iterdir()):
        previous = json.loads(stamp.read_text()) if stamp.exists() else None
        if previous == json.loads(json.dumps(fingerprint)):
            return True
        aside = work_dir.with_name(f"{work_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        work_dir.rename(aside)
        log.warning("%s held state of a different run (settings or inputs changed); moved it to %s and "
                    "starting fresh", work_dir, aside)
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")
    return False


def weights_digest(path: str | Path) -> str:
    """sha256 over a checkpoint's tensors (names, dtypes, shapes, bytes), independent of how it was saved:
    torch.save writes a fresh serialization id each time, so identical weights give different files."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

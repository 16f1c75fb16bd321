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


def umask() -> int:
    """The process's umask, read without changing it where the kernel reports it (setting it to read it would
    briefly apply 0 to files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class DiskFull(Exception):
    """A save that ran out of space; the message names the file, the folder and the fix."""


@contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path in the target's directory; on success it replaces `target` atomically. A full disk
    leaves the previous `target` as it was and raises `DiskFull`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file 0600; the target gets what any new file of the user's gets (a colleague sharing
        # a data root or results folder can read it under a group- or world-readable umask).
        os.chmod(tmp, 0o666 & ~umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        if not _out_of_space(e):
            raise
        raise DiskFull(f"{target}: no space left in {target.parent} while saving it ({_free(target.parent):,} bytes "
                       f"free); {'the previous file is kept; ' if target.exists() else ''}free space and run again "
                       "(a training run resumes from its last saved state)") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _out_of_space(error: Exception) -> bool:
    """ENOSPC or a quota (as the write itself reported it, not inferred from the free space afterwards, which
    other processes change)."""
    import errno

    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _free(folder: Path) -> int:
    import shutil

    return shutil.disk_usage(folder).free


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


class _RecordedWrites:
    """A file for torch.save that keeps the OSError of a failed write: torch reports a short write as a
    RuntimeError ("unexpected pos"), and the cause (ENOSPC, EDQUOT, EIO) is only seen here."""

    def __init__(self, f):
        self.f, self.error = f, None

    def _recorded(self, call, *args):
        try:
            return call(*args)
        except OSError as e:
            self.error = e
            raise

    def write(self, data):
        return self._recorded(self.f.write, data)

    def flush(self):
        return self._recorded(self.f.flush)


def atomic_torch_save(obj, target: str | Path) -> None:
    import torch

    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            out = _RecordedWrites(f)
            try:
                torch.save(obj, out)
            except RuntimeError:
                if out.error is not None:
                    raise out.error from None
                raise


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunLocked(Exception):
    """Another process holds the run's lock; the message names its host and pid."""


_HELD: list[int] = []  # lock files this process holds until it exits


def _lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 200).decode(errors="replace").strip() or "another process"


def _mark_held(fd: int) -> None:
    import socket

    os.ftruncate(fd, 0)
    os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}".encode(), 0)


def lock_run(path: str | Path) -> None:
    """Hold an exclusive lock on `path` (created if needed) until this process exits, so that two trainers never
    write one run directory at once, Snakemake's --nolock or two machines on a shared filesystem included (POSIX
    record locks, which NFS honours)."""
    import fcntl

    path = Path(path)
    fd = _lock_file(path)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder(fd)
        os.close(fd)
        raise RunLocked(f"{path.with_suffix('')}: {holder} is running this job; wait for it to end or stop it "
                        "first") from None
    _mark_held(fd)
    _HELD.append(fd)


@contextmanager
def waiting_lock(path: str | Path, log):
    """Hold an exclusive lock on `path` for the block, waiting (and saying for whom) while another process holds
    it: two runs sharing a data root take turns at each step, and the second finds the step done."""
    import fcntl

    fd = _lock_file(Path(path))
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("waiting for %s, which holds %s", _holder(fd), path)
            fcntl.lockf(fd, fcntl.LOCK_EX)
        _mark_held(fd)
        yield
    finally:
        os.close(fd)


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
        aside = work_dir.with_name(f"{work_dir.name}{STALE}{time.strftime('%Y%m%d-%H%M%S')}")
        work_dir.rename(aside)
        log.warning("%s held state of a different run (settings or inputs changed); moved it to %s and "
                    "starting fresh (`python -m pipeline stale --prune` deletes such folders)", work_dir, aside)
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")
    return False


STALE = ".stale-"


def stale_dirs(root: str | Path) -> list[tuple[Path, int]]:
    """(folder, bytes) of every work dir `claim_work_dir` moved aside under `root`."""
    found = []
    for path in sorted(Path(root).rglob(f"*{STALE}*")):
        if path.is_dir() and STALE in path.name:
            found.append((path, sum(f.stat().st_size for f in path.rglob("*") if f.is_file())))
    return found


def weights_digest(checkpoint: str | Path | dict) -> str:
    """sha256 over a checkpoint's tensors (names, dtypes, shapes, bytes), independent of how it was saved:
    torch.save writes a fresh serialization id each time, so identical weights give different files.
    `checkpoint`: a file, or what torch.load gave for one."""
    import torch

    state = checkpoint if isinstance(checkpoint, dict) else torch.load(checkpoint, map_location="cpu",
                                                                        weights_only=True)
    state = state.get("model", state)
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

"""Safe, atomic, idempotent extraction of tar, tar.gz and zip archives.

Every member is checked before anything is written: absolute paths, `..` components, and symbolic or hard
links that resolve outside the target are refused with an `ExtractError` naming the archive and the member,
and device files are refused outright. The archive is unpacked into a temporary folder beside the target,
which is renamed into place only when complete, and a completion marker makes a second call a no-op.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = ".extracted"


class ExtractError(Exception):
    """An archive that is unsafe or unreadable; the message is one line naming the archive and member."""


def _inside(name: str) -> bool:
    """Whether a relative POSIX path stays inside the folder it is relative to."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\\" in name:
        return False
    norm = posixpath.normpath(name)
    return norm != ".." and not norm.startswith("../")


def check_tar(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        if not _inside(m.name):
            raise ExtractError(f"{archive}: member {m.name!r} would be written outside the target; refusing")
        if m.issym():
            target = posixpath.join(posixpath.dirname(m.name), m.linkname)
            if m.linkname.startswith("/") or not _inside(target):
                raise ExtractError(f"{archive}: symlink {m.name!r} -> {m.linkname!r} points outside the target; "
                                   "refusing")
        elif m.islnk():
            if not _inside(m.linkname):
                raise ExtractError(f"{archive}: hard link {m.name!r} -> {m.linkname!r} points outside the target; "
                                   "refusing")
        elif not (m.isfile() or m.isdir()):
            raise ExtractError(f"{archive}: member {m.name!r} is a device or fifo; refusing")
    return members


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        members = check_tar(archive, tar)
        # The "data" filter re-checks every member on extraction (paths, links, modes) as a second guard.
        tar.extractall(dest, members=members, filter="data")


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            if not _inside(info.filename):
                raise ExtractError(f"{archive}: member {info.filename!r} would be written outside the target; "
                                   "refusing")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise ExtractError(f"{archive}: member {info.filename!r} is a symlink; refusing")
        bad = zf.testzip()
        if bad is not None:
            raise ExtractError(f"{archive}: member {bad!r} is corrupt (CRC mismatch); delete the archive and "
                               "download it again")
        zf.extractall(dest, members=infos)


@contextmanager
def staged_dir(target: Path, marker_text: str = "done") -> Iterator[Path]:
    """A temporary folder beside `target` to fill; when the block succeeds it gets the completion marker and
    replaces `target` (a partial tree left by an interrupted run included); otherwise it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        (tmp / MARKER).write_text(f"{marker_text}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def extract(archive: Path, target: Path) -> Path:
    """Unpack `archive` so that its members lie under `target`; a no-op when `target` is already complete."""
    archive, target = Path(archive), Path(target)
    if (target / MARKER).is_file():
        return target
    if not archive.is_file():
        raise ExtractError(f"{archive}: archive not found")
    try:
        with staged_dir(target, archive.name) as tmp:
            if archive.name.lower().endswith(".zip"):
                _extract_zip(archive, tmp)
            elif tarfile.is_tarfile(archive):
                _extract_tar(archive, tmp)
            else:
                raise ExtractError(f"{archive}: not a tar, tar.gz or zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise ExtractError(f"{archive}: unreadable archive ({e}); delete it and download it again") from None
    return target

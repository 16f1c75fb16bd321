"""Safe, atomic, idempotent extraction of tar, tar.gz and zip archives.

Every member is checked before anything is written: absolute paths, `..` components, and symbolic or hard
links that resolve outside the target are refused with an `ExtractError` naming the archive and the member,
and device files are refused outright. The archive is unpacked into a temporary folder beside the target,
which is renamed into place only when complete, and a completion marker makes a second call a no-op.
"""

from __future__ import annotations

import multiprocessing
import os
import posixpath
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from pipeline.io import umask

MARKER = ".extracted"


class ExtractError(Exception):
    """An archive that is unsafe or unreadable; the message is one line naming the archive and member."""


def _inside(name: str) -> bool:
    """Whether a relative POSIX path stays inside the folder it is relative to (`a:b.txt` and `a\\b` are plain
    POSIX names and do)."""
    norm = posixpath.normpath(name)
    return not name.startswith("/") and norm != ".." and not norm.startswith("../")


def check_names(archive: Path, entries: list[tuple[str, bool]], dest: Path) -> None:
    """Refuse, before anything is written, member names that cannot be written as given: outside the target,
    holding a NUL byte, longer than the filesystem allows, or used both as a file and as a folder.
    `entries`: (name, is_dir) per member."""
    name_max = _pathconf(dest, "PC_NAME_MAX", 255)
    path_max = _pathconf(dest, "PC_PATH_MAX", 4096) - len(os.fsencode(os.path.abspath(dest))) - 64
    files, dirs = {}, set()
    for name, is_dir in entries:
        if "\x00" in name:
            raise ExtractError(f"{archive}: member {name!r} has a NUL byte in its name; refusing")
        if not _inside(name):
            raise ExtractError(f"{archive}: member {name!r} would be written outside the target; refusing")
        norm = posixpath.normpath(name)
        longest = max(len(os.fsencode(part)) for part in norm.split("/"))
        if longest > name_max or len(os.fsencode(norm)) > path_max:
            raise ExtractError(f"{archive}: member {name[:60]!r}... has a name longer than the filesystem "
                               f"allows ({longest} bytes in one part, {name_max} allowed); refusing")
        parts = norm.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if is_dir:
            dirs.add(norm)
        else:
            files.setdefault(norm, name)
    clash = sorted(set(files) & dirs)
    if clash:
        raise ExtractError(f"{archive}: member {files[clash[0]]!r} is a file, and other members use it as a "
                           "folder; refusing")


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def check_tar(archive: Path, tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    check_names(archive, [(m.name, m.isdir()) for m in members], dest)
    for m in members:
        if "\x00" in m.linkname:
            raise ExtractError(f"{archive}: link {m.name!r} has a NUL byte in its target; refusing")
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


# A member list that declares more than this many times the archive's size unpacks only past this many bytes
# (a zip or gzip bomb); real dataset archives hold JPEGs and PNGs (about 1x) and JSON (about 10x). Raise it with
# BACKBONE_REPRO_MAX_UNPACK_RATIO for an archive you trust.
MAX_RATIO = 100
RATIO_FREE_BYTES = 1 << 30


def check_size(archive: Path, declared: int, dest: Path) -> None:
    """Before anything is written: the members' declared total fits the free space at `dest`, and is not a bomb."""
    ratio_cap = float(os.environ.get("BACKBONE_REPRO_MAX_UNPACK_RATIO", MAX_RATIO))
    packed = max(archive.stat().st_size, 1)
    if declared > RATIO_FREE_BYTES and declared > ratio_cap * packed:
        raise ExtractError(f"{archive}: its members declare {declared:,} bytes from {packed:,} ({declared / packed:.0f}"
                           f"x, over the {ratio_cap:g}x cap): a decompression bomb or not the published archive; "
                           "refusing (set BACKBONE_REPRO_MAX_UNPACK_RATIO to unpack an archive you trust)")
    free = shutil.disk_usage(dest).free
    if declared > free:
        raise ExtractError(f"{archive}: unpacks to {declared:,} bytes, {dest} has {free:,} free; free space or set "
                           "data_root in config/config.yaml to a larger disk")


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        members = check_tar(archive, tar, dest)
        check_size(archive, sum(m.size for m in members if m.isfile()), dest)
        extract_members(archive, tar, _progress(members, archive), dest)


def extract_members(archive: Path, tar: tarfile.TarFile, members, dest: Path) -> None:
    """Unpack checked members; the "data" filter re-checks each on extraction (paths, links through links,
    modes) as a second guard, and what it blocks is named."""
    try:
        tar.extractall(dest, members=members, filter="data")
    except tarfile.FilterError as e:
        member = e.tarinfo.name if e.tarinfo else "?"
        raise ExtractError(f"{archive}: member {member!r} is blocked by tarfile's data filter ({e}): a chain of "
                           "links that leads outside the target or to a special file; refusing") from None


# Compression methods Python's zipfile reads (stored, deflate, bzip2, lzma).
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def check_zip(archive: Path, infos: list[zipfile.ZipInfo], dest: Path) -> None:
    check_names(archive, [(info.orig_filename, info.is_dir()) for info in infos], dest)
    for info in infos:
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise ExtractError(f"{archive}: member {info.filename!r} is a symlink; refusing")
        if info.flag_bits & 0x1:
            raise ExtractError(f"{archive}: member {info.filename!r} is encrypted; the published archives are not, "
                               "so this is not one of them (delete it and download it again)")
        if info.compress_type not in ZIP_METHODS:
            raise ExtractError(f"{archive}: member {info.filename!r} uses zip compression method "
                               f"{info.compress_type}, which Python's zipfile cannot read (stored, deflate, bzip2 "
                               "and lzma can); repack it or download the published archive")


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        check_zip(archive, infos, dest)
        check_size(archive, sum(info.file_size for info in infos), dest)
        bad = zf.testzip()
        if bad is not None:
            raise ExtractError(f"{archive}: member {bad!r} is corrupt (CRC mismatch); delete the archive and "
                               "download it again")
        for info in _progress(infos, archive):
            zf.extract(info, dest)


def _progress(members: list, archive: Path):
    return tqdm(members, desc=f"extract {archive.name}", unit="file", mininterval=1.0, disable=None)


@contextmanager
def staged_dir(target: Path, marker_text: str = "done") -> Iterator[Path]:
    """A temporary folder beside `target` to fill; when the block succeeds it gets the completion marker and
    replaces `target` (a partial tree left by an interrupted run included); otherwise it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 would hide a shared dataset from other users
    try:
        yield tmp
        (tmp / MARKER).write_text(f"{marker_text}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def map_files(fn, items: list, desc: str) -> None:
    """`fn(item)` for every item on all CPU cores, with a progress bar (per-file conversions)."""
    if len(items) < 64:  # not worth starting processes
        for item in tqdm(items, desc=desc, unit="file", disable=None):
            fn(item)
        return
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        for _ in tqdm(pool.imap_unordered(fn, items, chunksize=16), total=len(items), desc=desc, unit="file",
                      mininterval=1.0, disable=None):
            pass


def expect_count(where: Path, what: str, found: int, expected: int | None) -> None:
    """Refuse a prepared tree whose count differs from the published one (config/datasets.yaml `expect`)."""
    if expected is not None and found != expected:
        raise ExtractError(f"{where}: {found} {what}, the published count is {expected}; an archive is incomplete "
                           "or not the published one (delete it under archives/ and run again)")


def link_file(src: Path, dst: Path) -> None:
    """A hard link (no copy, no extra space) where the filesystem allows one, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_tree(src: Path, dst: Path) -> int:
    """Every file under `src` at the same relative path under `dst` (see `link_file`); returns the count."""
    count = 0
    for dirpath, _, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            if name != MARKER:
                link_file(Path(dirpath) / name, dst / rel / name)
                count += 1
    return count


def is_complete(target: Path, stamp: str) -> bool:
    """Whether `target` was completed by `staged_dir` from the inputs `stamp` identifies."""
    marker = Path(target) / MARKER
    return marker.is_file() and marker.read_text().strip() == stamp


def extract(archive: Path, target: Path, stamp: str | None = None) -> Path:
    """Unpack `archive` so that its members lie under `target`; a no-op when `target` is already complete
    (from the same archive: `stamp`, e.g. its verified hash, defaults to the archive's name)."""
    archive, target = Path(archive), Path(target)
    stamp = stamp or archive.name
    if is_complete(target, stamp):
        return target
    if not archive.is_file():
        raise ExtractError(f"{archive}: archive not found")
    with staged_dir(target, stamp) as tmp:
        unpack(archive, tmp)
    return target


def unpack(archive: Path, dest: Path) -> None:
    """Check and unpack a tar, tar.gz or zip archive into an existing folder `dest`."""
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, dest)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest)
        else:
            raise ExtractError(f"{archive}: not a tar, tar.gz or zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise ExtractError(f"{archive}: unreadable archive ({e}); delete it and download it again") from None

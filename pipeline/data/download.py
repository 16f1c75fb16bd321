"""Resumable, verified downloads of dataset archives.

`fetch(source, dest)` downloads `source.url` to `dest`: it resumes a partial `dest.part` with an HTTP Range
request, retries transient failures with exponential back-off, shows a progress bar (bytes and rate), checks
the free disk space first, and verifies the publisher's checksum. A checksum mismatch deletes the file and
fetches it once more from scratch; a second mismatch is a `DownloadError` naming the file and both hashes.
Local paths and file:// URLs are verified in place, never copied.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(Exception):
    """A download that cannot complete; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class Source:
    """One published file: where it is, its name, and its size and hash as the publisher lists them."""

    url: str
    filename: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    # Environment variables holding "user:password" or a bearer token for hosts that need a login.
    credentials_env: str | None = None

    def checksum(self) -> tuple[str, str] | None:
        if self.sha256:
            return "sha256", self.sha256.lower()
        if self.md5:
            return "md5", self.md5.lower()
        return None


def file_hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _request(source: Source, start: int) -> urllib.request.Request:
    req = urllib.request.Request(source.url, headers={"User-Agent": "backbone-repro"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    if source.credentials_env:
        secret = os.environ.get(source.credentials_env)
        if not secret:
            raise DownloadError(f"{source.filename}: {source.url} needs a login; set {source.credentials_env} "
                                "to 'user:password' or a token (or point the config at a local copy)")
        if ":" in secret:
            req.add_header("Authorization", "Basic " + base64.b64encode(secret.encode()).decode())
        else:
            req.add_header("Authorization", f"Bearer {secret}")
    return req


def _check_space(dest: Path, needed: int | None) -> None:
    if not needed:
        return
    free = shutil.disk_usage(dest.parent).free
    if free < needed:
        raise DownloadError(f"{dest}: needs {needed / 1e9:.2f} GB free, {dest.parent} has {free / 1e9:.2f} GB; "
                            "free space or set data_root in config/config.yaml to a larger disk")


def _download(source: Source, part: Path, retries: int, backoff: float, timeout: float) -> None:
    attempt = 0
    while True:
        start = part.stat().st_size if part.exists() else 0
        if source.size is not None and start == source.size:
            return
        try:
            with urllib.request.urlopen(_request(source, start), timeout=timeout) as resp:
                if start and resp.status != 206:  # the server ignored Range: start over
                    start = 0
                total = source.size or (start + int(resp.headers.get("Content-Length", 0)) or None)
                with open(part, "ab" if start else "wb") as f, tqdm(
                        total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=source.filename, mininterval=1.0, disable=None) as bar:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            size = part.stat().st_size
            if source.size is None or size >= source.size:
                return
            raise ConnectionError(f"connection closed at {size} of {source.size} bytes")
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise DownloadError(f"{source.filename}: {source.url} refused access (HTTP {e.code}); check the "
                                    f"credentials{f' in {source.credentials_env}' if source.credentials_env else ''}"
                                    ) from None
            if e.code == 404:
                raise DownloadError(f"{source.filename}: {source.url} not found (HTTP 404); check the URL in the "
                                    "dataset's sources in config") from None
            if e.code == 416 and source.size is None:  # Range past the end: already complete
                return
            error = f"HTTP {e.code}"
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
            error = str(getattr(e, "reason", e))
        attempt += 1
        if attempt > retries:
            raise DownloadError(f"{source.filename}: {source.url} failed after {retries} retries ({error}); the "
                                f"partial file {part} is kept and the next run resumes it")
        wait = backoff * 2 ** (attempt - 1)
        log.warning("%s: %s; retry %d/%d in %.1fs", source.filename, error, attempt, retries, wait)
        time.sleep(wait)


def verify(path: Path, source: Source) -> None:
    """Raise `DownloadError` unless `path` has the published size and checksum."""
    if source.size is not None and path.stat().st_size != source.size:
        raise DownloadError(f"{path}: size {path.stat().st_size} bytes, expected {source.size}")
    expected = source.checksum()
    if expected is not None:
        actual = file_hash(path, expected[0])
        if actual != expected[1]:
            raise DownloadError(f"{path}: {expected[0]} mismatch: expected {expected[1]}, got {actual}")


def fetch(source: Source, dest: Path, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0) -> Path:
    """Download (or locate) `source` as `dest`, verified. Returns the verified file's path."""
    parsed = urllib.parse.urlparse(source.url)
    if parsed.scheme in ("", "file"):
        local = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else source.url).expanduser()
        if not local.is_file():
            raise DownloadError(f"{source.filename}: {local} does not exist; download it from the publisher and "
                                "set its path in the dataset's sources in config")
        verify(local, source)
        return local
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        verify(dest, source)
        return dest
    part = dest.with_name(dest.name + ".part")
    for fresh_retry in (False, True):
        _check_space(dest, (source.size or 0) - (part.stat().st_size if part.exists() else 0))
        _download(source, part, retries, backoff, timeout)
        try:
            verify(part, source)
        except DownloadError as e:
            part.unlink()
            if fresh_retry:
                raise DownloadError(str(e).replace(str(part), str(dest)) + " (after a fresh re-download); the "
                                    "source or its listed hash is wrong") from None
            log.warning("%s; deleted, downloading again", e)
        else:
            os.replace(part, dest)
            return dest

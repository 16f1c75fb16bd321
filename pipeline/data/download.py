"""Resumable, verified downloads of dataset archives.

Two steps, which the Snakefile runs as separate jobs and `fetch` runs back to back:

- `download(source, dest)` resumes a partial `dest.part` with an HTTP Range request, retries transient failures
  with exponential back-off, shows a progress bar (bytes and rate) and checks the free disk space first. A
  local path or file:// URL is not copied: `dest` becomes a symbolic link to it.
- `verify_or_refetch(source, dest)` checks the publisher's size and checksum (given in config, or listed in a
  published SHA256SUMS file). A mismatch deletes the file and downloads it once more from scratch; a second
  mismatch is a `DownloadError` naming the file, the expected and the actual hash.
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

    url: str | None
    filename: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    # Environment variables holding "user:password" or a bearer token for hosts that need a login. They go to the
    # url's host only (a redirect elsewhere drops them), and over https only unless `credentials_over_http`.
    credentials_env: str | None = None
    credentials_over_http: bool = False
    # A published checksum list in `sha256sum` format (URL or path), for sources whose hash is not in config.
    checksums: str | None = None
    # Where a person gets the file (named in errors about a missing or wrong copy).
    homepage: str | None = None
    # "unverified": the publisher gives neither size nor checksum and the user accepts that (config schema).
    trust: str | None = None

    @property
    def where(self) -> str:
        return f"download it from {self.homepage or 'the publisher'}"

    @property
    def local(self) -> Path | None:
        return None if self.url is None else local_path(self.url)

    def checksum(self) -> tuple[str, str] | None:
        if self.sha256:
            return "sha256", self.sha256.lower()
        if self.md5:
            return "md5", self.md5.lower()
        if self.checksums:
            return "sha256", _listed_sha256(self.checksums, self.filename)
        return None


def local_path(url: str) -> Path | None:
    """The file a local path or file:// URL names; None for remote URLs."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    return Path(url).expanduser() if parsed.scheme == "" else None


def _listed_sha256(listing: str, filename: str) -> str:
    """The hash `listing` (a `sha256sum`-format file: "<hex>  <name>" per line) gives for `filename`."""
    try:
        if (local := local_path(listing)) is not None:
            text = local.read_text()
        else:
            with urllib.request.urlopen(listing, timeout=60) as resp:
                text = resp.read().decode()
    except (OSError, urllib.error.URLError) as e:
        raise DownloadError(f"{filename}: cannot read its checksum list {listing} ({e})") from None
    for line in text.splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and parts[1].lstrip("*").strip() == filename:
            return parts[0].lower()
    raise DownloadError(f"{filename}: not listed in {listing}; re-publish the archives or fix the file name")


def file_hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _SameHostRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects keep the login only to the host (and scheme) it was given for, as `requests` does; anywhere
    else the request goes without it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        old, to = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if new is not None and auth and (to.hostname, to.port, to.scheme) == (old.hostname, old.port, old.scheme):
            new.add_unredirected_header("Authorization", auth)
        return new


def _request(source: Source, start: int) -> urllib.request.Request:
    req = urllib.request.Request(source.url, headers={"User-Agent": "backbone-repro"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    if source.credentials_env:
        secret = os.environ.get(source.credentials_env)
        if not secret:
            raise DownloadError(f"{source.filename}: {source.url} needs a login; set {source.credentials_env} "
                                "to 'user:password' or a token (or point the config at a local copy)")
        if urllib.parse.urlsplit(source.url).scheme != "https" and not source.credentials_over_http:
            raise DownloadError(f"{source.filename}: refusing to send {source.credentials_env} over plain "
                                f"{urllib.parse.urlsplit(source.url).scheme} to {source.url}; use its https URL, or "
                                "set credentials_over_http: true on this source in config/datasets.yaml")
        value = ("Basic " + base64.b64encode(secret.encode()).decode()) if ":" in secret else f"Bearer {secret}"
        req.add_unredirected_header("Authorization", value)
    return req


_OPENER = urllib.request.build_opener(_SameHostRedirect)


def _check_space(dest: Path, needed: int | None) -> None:
    if not needed:
        return
    free = shutil.disk_usage(dest.parent).free
    if free < needed:
        raise DownloadError(f"{dest}: needs {_size(needed)} free, {dest.parent} has {_size(free)}; free space or "
                            "set data_root in config/config.yaml to a larger disk")


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _download(source: Source, part: Path, retries: int, backoff: float, timeout: float) -> None:
    attempt = 0
    while True:
        start = part.stat().st_size if part.exists() else 0
        if source.size is not None and start == source.size:
            return
        try:
            with _OPENER.open(_request(source, start), timeout=timeout) as resp:
                if start and resp.status != 206:  # the server ignored Range: start over
                    start = 0
                total = source.size or (start + int(resp.headers.get("Content-Length", 0)) or None)
                if source.size is None and total:  # no published size: check the space the server announces
                    _check_space(part, total - start)
                _write_body(resp, part, start, total, source)
            size = part.stat().st_size
            if total is None or size == total:
                return
            raise ConnectionError(f"connection closed at {size} of {total} bytes")
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
            if 300 <= e.code < 400:  # urllib gives up on a redirect loop or too many redirects
                raise DownloadError(f"{source.filename}: {source.url} redirects in a loop or more than "
                                    f"{urllib.request.HTTPRedirectHandler.max_redirections} times (HTTP {e.code}); "
                                    "check the URL in the dataset's sources in config") from None
            error = f"HTTP {e.code}"
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
            error = str(getattr(e, "reason", e))
            if isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
                error = f"no data for {timeout:g} s; download.timeout_s in config/config.yaml sets the wait"

        attempt += 1
        if attempt > retries:
            raise DownloadError(f"{source.filename}: {source.url} failed after {retries} retries ({error}); the "
                                f"partial file {part} is kept and the next run resumes it")
        wait = backoff * 2 ** (attempt - 1)
        log.warning("%s: %s; retry %d/%d in %.1fs", source.filename, error, attempt, retries, wait)
        time.sleep(wait)


def _write_body(resp, part: Path, start: int, total: int | None, source: Source) -> None:
    """Append the response to `part`, never past `total` (the published size, else the announced length)."""
    with open(part, "ab" if start else "wb") as f, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=source.filename,
            mininterval=1.0, disable=None) as bar:
        written = start
        while chunk := resp.read(CHUNK):
            if total is not None and written + len(chunk) > total:
                f.write(chunk[:total - written])
                raise DownloadError(f"{source.filename}: {source.url} sent more than the {total} bytes "
                                    f"{'published' if source.size else 'it announced'}; stopped at {total}, check "
                                    "the URL and the size in config/datasets.yaml")
            f.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))


def verify(path: Path, source: Source) -> tuple[str, str] | None:
    """Raise `DownloadError` unless `path` has the published size and checksum; returns the (algorithm, hash)
    checked, or None when the source publishes no checksum."""
    if source.size is not None and path.stat().st_size != source.size:
        raise DownloadError(f"{path}: size {path.stat().st_size} bytes, expected {source.size}")
    expected = source.checksum()
    if expected is not None:
        actual = file_hash(path, expected[0])
        if actual != expected[1]:
            raise DownloadError(f"{path}: {expected[0]} mismatch: expected {expected[1]}, got {actual}")
    return expected


def download(source: Source, dest: Path, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0) -> Path:
    """Put `source` at `dest`: downloaded (resuming `dest.part`), or a symbolic link to a local copy."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.url is None:
        raise DownloadError(f"{source.filename}: no url in config/datasets.yaml; {source.where} and set its url "
                            "to the local path")
    if (local := source.local) is not None:
        if not local.is_file():
            raise DownloadError(f"{source.filename}: {local} does not exist; {source.where} and set its path in "
                                "the dataset's sources in config/datasets.yaml")
        link = dest.with_name(f".{dest.name}.link")
        link.unlink(missing_ok=True)
        link.symlink_to(local.resolve())
        os.replace(link, dest)
        return dest
    if dest.is_file():
        return dest
    part = dest.with_name(dest.name + ".part")
    _check_space(dest, (source.size or 0) - (part.stat().st_size if part.exists() else 0))
    _download(source, part, retries, backoff, timeout)
    if source.size is not None and part.stat().st_size != source.size:
        size = part.stat().st_size
        part.unlink()
        raise DownloadError(f"{dest}: the server sent {size} bytes, expected {source.size}; deleted, run again")
    os.replace(part, dest)
    return dest


def verify_or_refetch(source: Source, dest: Path, **download_kw) -> tuple[str, str] | None:
    """Check `dest` against the published size and hash; on a mismatch delete it, download it once more and
    check again. Returns the (algorithm, hash) verified, or None when the source publishes no checksum."""
    dest = Path(dest)
    try:
        return verify(dest, source)
    except DownloadError as e:
        if source.local is not None:
            raise DownloadError(f"{e}; the local copy {source.local} is damaged or not the published file, "
                                f"{source.where} again") from None
        log.warning("%s; deleted, downloading again", e)
        dest.unlink()
        download(source, dest, **download_kw)
        try:
            return verify(dest, source)
        except DownloadError as e2:
            dest.unlink()
            raise DownloadError(f"{e2} (after a fresh re-download); the source or its listed hash is wrong") from None


def fetch(source: Source, dest: Path, **download_kw) -> Path:
    """Download (or link) `source` as `dest` and verify it. Returns `dest`."""
    download(source, dest, **download_kw)
    verify_or_refetch(source, dest, **download_kw)
    return Path(dest)

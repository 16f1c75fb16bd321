"""pipeline/data/download.py and extract.py against an HTTP server on 127.0.0.1 and hostile archives."""

import hashlib
import io
import os
import shutil
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.data.download import DownloadError, Source, fetch
from pipeline.data.extract import MARKER, ExtractError, extract

PAYLOAD = os.urandom(3 * (1 << 20) + 123)  # a few chunks, not a multiple of the chunk size


class QuietServer(ThreadingHTTPServer):
    """Says nothing of a client that hung up (the stall tests' client gives up before the body is written)."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Server:
    """Serves `files` with Range support; `cut_once[name] = n` ends the first response after n bytes,
    `corrupt[name] = k` flips a byte in the next k responses, `requests` records each Range header."""

    def __init__(self):
        self.files, self.cut_once, self.corrupt, self.requests = {}, {}, {}, []
        # name -> URL to redirect to; the Authorization header each request brought; name -> seconds to stall
        # after the headers.
        self.redirects, self.auth, self.stall = {}, [], {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                server.auth.append(self.headers.get("Authorization"))
                if name in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[name])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("Authorization") == "Basic bm86Z29vZA==":  # no:good
                    self.send_error(403)
                    return
                if name not in server.files:
                    self.send_error(404)
                    return
                data = bytearray(server.files[name])
                if server.corrupt.get(name):
                    server.corrupt[name] -= 1
                    data[len(data) // 2] ^= 0xFF
                start = 0
                if (rng := self.headers.get("Range")) is not None:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = bytes(data[start:])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if (stall := server.stall.get(name)) is not None:
                    time.sleep(stall)
                if (cut := server.cut_once.pop(name, None)) is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture()
def server():
    s = Server()
    s.files["val.tar"] = PAYLOAD
    yield s
    s.httpd.shutdown()


def _source(server, name="val.tar", **kw):
    kw.setdefault("size", len(PAYLOAD))
    kw.setdefault("md5", hashlib.md5(PAYLOAD).hexdigest())
    return Source(url=f"{server.url}/{name}", filename=name, **kw)


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.cut_once["val.tar"] = 1_500_000
    out = fetch(_source(server), tmp_path / "val.tar", backoff=0.01)
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "val.tar.part").exists()
    assert server.requests[0] == ("val.tar", None)
    assert server.requests[1][1].startswith("bytes=") and int(server.requests[1][1][6:-1]) >= 1_000_000


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    (tmp_path / "val.tar.part").write_bytes(PAYLOAD[:2_000_000])
    fetch(_source(server, sha256=hashlib.sha256(PAYLOAD).hexdigest(), md5=None), tmp_path / "val.tar")
    assert server.requests == [("val.tar", "bytes=2000000-")]
    assert (tmp_path / "val.tar").read_bytes() == PAYLOAD


def test_corrupt_download_is_fetched_again_once(server, tmp_path):
    server.corrupt["val.tar"] = 1
    assert fetch(_source(server), tmp_path / "val.tar").read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_corrupt_twice_fails_with_both_hashes_and_leaves_nothing(server, tmp_path):
    server.corrupt["val.tar"] = 2
    bad = bytearray(PAYLOAD)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(DownloadError) as err:
        fetch(_source(server), tmp_path / "val.tar")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "val.tar") in msg
    assert hashlib.md5(PAYLOAD).hexdigest() in msg and hashlib.md5(bad).hexdigest() in msg
    assert list(tmp_path.iterdir()) == []


def test_missing_credentials_file_and_space_are_one_line_errors(server, tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGENET_AUTH", raising=False)
    with pytest.raises(DownloadError, match="set IMAGENET_AUTH"):
        fetch(_source(server, credentials_env="IMAGENET_AUTH"), tmp_path / "val.tar")
    monkeypatch.setenv("IMAGENET_AUTH", "no:good")
    with pytest.raises(DownloadError, match=r"refused access \(HTTP 403\); check the credentials in IMAGENET_AUTH"):
        fetch(_source(server, credentials_env="IMAGENET_AUTH", credentials_over_http=True), tmp_path / "val.tar")
    with pytest.raises(DownloadError, match="not found"):
        fetch(_source(server, "train.tar"), tmp_path / "train.tar")
    with pytest.raises(DownloadError, match="does not exist; download it from https://image-net.org/download-images"):
        fetch(Source(url=str(tmp_path / "ILSVRC2012_img_val.tar"), filename="ILSVRC2012_img_val.tar",
                     homepage="https://image-net.org/download-images.php"), tmp_path / "x")
    with pytest.raises(DownloadError, match=r"needs 1152921504.61 GB free, .* has [\d.]+ GB; free space or set"):
        fetch(_source(server, size=1 << 60), tmp_path / "val.tar")


def test_without_a_published_size_the_announced_length_is_checked_against_free_space(server, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setattr("pipeline.data.download.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 1000))
    with pytest.raises(DownloadError, match=r"needs 3.15 MB free, .* has 0.00 MB"):
        fetch(_source(server, size=None), tmp_path / "val.tar")
    assert server.requests == [("val.tar", None)]


def test_credentials_go_over_https_only_unless_allowed(server, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGENET_AUTH", "user:secret")
    with pytest.raises(DownloadError, match=r"refusing to send IMAGENET_AUTH over plain http to http://127.0.0.1:"
                                            r"\d+/val.tar; use its https URL, or set credentials_over_http: true"):
        fetch(_source(server, credentials_env="IMAGENET_AUTH"), tmp_path / "val.tar")
    assert server.requests == []


def test_a_redirect_to_another_host_drops_the_credentials(server, tmp_path, monkeypatch):
    other = Server()
    other.files["val.tar"] = PAYLOAD
    try:
        # The same port number under another host name: a different origin for the credentials.
        server.redirects["val.tar"] = f"{other.url.replace('127.0.0.1', 'localhost')}/val.tar"
        server.redirects["same.tar"] = f"{server.url}/val.tar"
        monkeypatch.setenv("IMAGENET_AUTH", "user:secret")
        fetch(_source(server, credentials_env="IMAGENET_AUTH", credentials_over_http=True), tmp_path / "val.tar")
        assert server.auth[0].startswith("Basic ") and other.auth == [None]
        assert (tmp_path / "val.tar").read_bytes() == PAYLOAD
        fetch(_source(server, "same.tar", credentials_env="IMAGENET_AUTH", credentials_over_http=True),
              tmp_path / "same.tar")
        assert server.auth[1:] == [server.auth[0]] * 2  # a redirect on the same host keeps them
    finally:
        other.httpd.shutdown()


def test_nothing_is_written_past_the_published_size(server, tmp_path):
    with pytest.raises(DownloadError, match=r"sent more than the 1000 bytes published; stopped at 1000"):
        fetch(_source(server, size=1000), tmp_path / "val.tar")
    assert (tmp_path / "val.tar.part").stat().st_size == 1000


def test_a_short_body_without_a_published_size_is_resumed_not_finished(server, tmp_path):
    server.cut_once["val.tar"] = 1 << 20
    fetch(_source(server, size=None), tmp_path / "val.tar", backoff=0.01)
    assert (tmp_path / "val.tar").read_bytes() == PAYLOAD
    assert server.requests == [("val.tar", None), ("val.tar", f"bytes={1 << 20}-")]


def test_a_redirect_loop_is_one_line_without_retries(server, tmp_path):
    server.redirects["loop.tar"] = f"{server.url}/loop.tar"
    with pytest.raises(DownloadError, match=r"loop.tar: http://127.0.0.1:\d+/loop.tar redirects in a loop or more than "
                                            r"10 times \(HTTP 302\); check the URL"):
        fetch(_source(server, "loop.tar"), tmp_path / "loop.tar")
    assert len(server.requests) <= 11


def test_a_stalled_server_ends_after_the_configured_timeout(server, tmp_path):
    server.stall["val.tar"] = 5
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"val.tar: .* failed after 1 retries \(no data for 0.3 s; "
                                            r"download.timeout_s in config/config.yaml sets the wait\); the partial "
                                            r"file .* is kept and the next run resumes it"):
        fetch(_source(server), tmp_path / "val.tar", timeout=0.3, retries=1, backoff=0.01)
    assert time.monotonic() - start < 4


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name, target, kind):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("member", [
    _file("../evil.txt"), _file("/tmp/evil.txt"), _file("a/../../evil.txt"),
    _link("link", "../../outside", tarfile.SYMTYPE), _link("link", "/etc/passwd", tarfile.SYMTYPE),
    _link("hard", "../outside", tarfile.LNKTYPE),
], ids=["dotdot", "absolute", "nested-dotdot", "symlink-escape", "symlink-absolute", "hardlink-escape"])
def test_malicious_tar_members_are_refused(tmp_path, member):
    archive = _tar(tmp_path / "evil.tar.gz", [_file("ok/fine.txt"), member])
    target = tmp_path / "box" / "out"
    with pytest.raises(ExtractError, match="refusing"):
        extract(archive, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "evil.tar.gz"]
    assert list((tmp_path / "box").iterdir()) == []  # no target, no temporary folder left behind


def test_malicious_zip_member_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil.txt", "bad")
    with pytest.raises(ExtractError, match=r"'\.\./evil\.txt' would be written outside"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()


def test_extraction_is_atomic_idempotent_and_keeps_inside_links(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", [_file("a/b.txt", b"hello"), _link("a/c.txt", "b.txt", tarfile.SYMTYPE)])
    out = extract(archive, tmp_path / "out")
    assert (out / "a" / "b.txt").read_bytes() == b"hello" and (out / "a" / "c.txt").read_bytes() == b"hello"
    assert (out / MARKER).is_file()
    archive.unlink()  # a second call does nothing, so it needs no archive
    assert extract(archive, tmp_path / "out") == out
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.writestr("ADEChallengeData2016/images/validation/x.jpg", b"jpg")
    assert (extract(tmp_path / "z.zip", tmp_path / "ade") / "ADEChallengeData2016/images/validation/x.jpg").is_file()


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    bomb = tmp_path / "bomb.zip"
    zero = bytes(1 << 20)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("zeros.bin", "w", force_zip64=True) as f:
            for _ in range(2048):  # 2 GiB of zeros in about 2 MiB
                f.write(zero)
    assert bomb.stat().st_size < 3 << 20
    with pytest.raises(ExtractError, match=r"bomb.zip: its members declare 2,147,483,648 bytes from [\d,]+ \(\d+x, "
                                           r"over the 100x cap\): a decompression bomb"):
        extract(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["bomb.zip"]


def _dir(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, None


@pytest.mark.parametrize("members, message", [
    ([_file("é\x00.txt")], r"member 'é\\x00.txt' has a NUL byte in its name"),
    ([_file("d/" + "n" * 300)],
     r"member 'd/n+'\.\.\. has a name longer than the filesystem allows \(300 bytes in one part, 255 allowed\)"),
    ([_file("a"), _file("a/b.txt")], r"member 'a' is a file, and other members use it as a folder"),
    ([_dir("a"), _file("a")], r"member 'a' is a file, and other members use it as a folder"),
], ids=["nul-byte", "over-long", "file-then-folder", "folder-then-file"])
def test_tar_members_that_cannot_be_written_are_refused_by_name(tmp_path, members, message):
    archive = _tar(tmp_path / "odd.tar.gz", [_file("ok.txt"), *members])
    with pytest.raises(ExtractError, match=f"odd.tar.gz: {message}; refusing"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _patched_zip(path, name, patch):
    """A one-member zip whose central directory (and local header) are edited by `patch(header, offset)`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, b"payload" * 10)
    raw = bytearray(path.read_bytes())
    patch(raw, raw.find(b"PK\x03\x04") + 6)  # local header: flag bits at +6, method at +8
    patch(raw, raw.find(b"PK\x01\x02") + 8)  # central directory: flag bits at +8, method at +10
    path.write_bytes(bytes(raw))
    return path


def _set_flag(raw, at):
    raw[at] |= 0x1


def _set_method(raw, at):
    raw[at + 2:at + 4] = (93).to_bytes(2, "little")


def _nul_name(raw, at):
    i = raw.find(b"aXb.txt", at)
    raw[i + 1] = 0


@pytest.mark.parametrize("patch, message", [
    (_set_flag, r"member 'aXb.txt' is encrypted"),
    (_set_method, r"member 'aXb.txt' uses zip compression method 93, which Python's zipfile cannot read"),
    (_nul_name, r"member 'a\\x00b.txt' has a NUL byte in its name"),
], ids=["encrypted", "unsupported-method", "nul-byte"])
def test_zip_members_that_cannot_be_read_are_refused_by_name(tmp_path, patch, message):
    archive = _patched_zip(tmp_path / "odd.zip", "aXb.txt", patch)
    with pytest.raises(ExtractError, match=f"odd.zip: {message}"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_link_chain_blocked_by_the_data_filter_says_so(tmp_path):
    # Each link stays inside by name, but "esc" resolves through "sub/up" (-> the target) to outside it.
    archive = _tar(tmp_path / "chain.tar.gz", [
        _dir("sub"), _link("sub/up", "..", tarfile.SYMTYPE), _link("esc", "sub/up/../outside", tarfile.SYMTYPE)])
    with pytest.raises(ExtractError, match=r"chain.tar.gz: member 'esc' is blocked by tarfile's data filter \(.*\): "
                                           r"a chain of links that leads outside the target"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_names_legal_on_posix_extract(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", [_file("a:b.txt", b"colon"), _file("c\\d.txt", b"backslash")])
    out = extract(archive, tmp_path / "out")
    assert (out / "a:b.txt").read_bytes() == b"colon" and (out / "c\\d.txt").read_bytes() == b"backslash"
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr("x/a:b.txt", b"zip colon")
    assert (extract(tmp_path / "ok.zip", tmp_path / "zout") / "x" / "a:b.txt").read_bytes() == b"zip colon"

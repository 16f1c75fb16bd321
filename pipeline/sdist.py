"""Fetch the source distributions pinned in envs/sdists.txt, through pip, verified by sha256.

Used by the set-up (detectron2) and by the embedded-data builder (labelme's example data).
Imports nothing heavy: envs/install_detectron2.py runs it before detectron2 exists.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.io import file_sha256 as sha256

ROOT = Path(__file__).resolve().parent.parent
PIN_FILE = ROOT / "envs" / "sdists.txt"
CACHE = ROOT / ".cache" / "sdists"
_PIN = re.compile(r"^([\w.-]+)==([\w.]+)\s+--hash=sha256:([0-9a-f]{64})\s*$")


def pins() -> dict[str, tuple[str, str, str]]:
    """{name: (name==version line, version, sha256)} from envs/sdists.txt."""
    out = {}
    for line in PIN_FILE.read_text().splitlines():
        m = _PIN.match(line)
        if m:
            out[m.group(1)] = (line.strip(), m.group(2), m.group(3))
    return out


def fetch(name: str, cache: Path = CACHE) -> Path:
    """Return the cached, verified sdist of `name`; download it with pip first if needed."""
    table = pins()
    if name not in table:
        raise SystemExit(f"{PIN_FILE}: no pin for {name!r}; add '{name}==<version> --hash=sha256:<digest>'")
    line, version, digest = table[name]
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"{name}-{version}.tar.gz"
    if sdist.exists() and sha256(sdist) == digest:
        return sdist
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "req.txt"
        req.write_text(line + "\n")
        # --no-build-isolation: metadata is prepared with what this environment already has
        # (detectron2's setup.py imports torch; labelme builds with hatchling).
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-build-isolation",
             "--no-binary", ":all:", "--require-hashes", "-r", str(req), "-d", tmp],
            check=True)
        got = next(Path(tmp).glob("*.tar.gz"))
        actual = sha256(got)
        if actual != digest:
            raise SystemExit(f"{got.name}: sha256 {actual} does not match the pin {digest} in {PIN_FILE}")
        got.replace(sdist)
    return sdist


if __name__ == "__main__":
    for pkg in sys.argv[1:] or pins():
        print(fetch(pkg))

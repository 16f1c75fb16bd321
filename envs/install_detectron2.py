"""Install detectron2 v0.6 as pure Python into the running interpreter's environment.

The pinned sdist (envs/sdists.txt) is fetched with pip, checked against its sha256, and its
`detectron2/` package is repacked as a py3-none-any wheel. Its setup.py cannot be used: it always
declares the compiled `detectron2._C` extension, whose C++ sources the sdist does not carry.
`models.compat` stands in for `_C` at import time.

    python envs/install_detectron2.py
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline import sdist as sdists  # noqa: E402


def record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def build_wheel(sdist: Path, version: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"pb1_detectron2-{version}-py3-none-any.whl"
    dist_info = f"pb1_detectron2-{version}.dist-info"
    prefix = f"{sdist.name[: -len('.tar.gz')]}/"
    records = []
    tmp = wheel.with_suffix(".tmp")
    with tarfile.open(sdist) as tar, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as whl:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.startswith(prefix + "detectron2/"):
                continue
            arcname = member.name[len(prefix):]
            if arcname.endswith((".cpp", ".cu", ".h", ".cuh")):
                continue
            data = tar.extractfile(member).read()
            whl.writestr(arcname, data)
            records.append(record_line(arcname, data))
        pkg_info = tar.extractfile(prefix + "PKG-INFO").read()
        meta = {
            "METADATA": pkg_info,
            "WHEEL": b"Wheel-Version: 1.0\nGenerator: backbone-repro envs/install_detectron2.py\n"
                     b"Root-Is-Purelib: true\nTag: py3-none-any\n",
            "top_level.txt": b"detectron2\n",
        }
        for fname, data in meta.items():
            whl.writestr(f"{dist_info}/{fname}", data)
            records.append(record_line(f"{dist_info}/{fname}", data))
        records.append(f"{dist_info}/RECORD,,")
        whl.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    tmp.replace(wheel)
    return wheel


def main() -> None:
    name = "pb1-detectron2"
    _, version, digest = sdists.pins()[name]
    sdist = sdists.fetch(name)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(sdist, version, Path(tmp))
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--no-index", "--force-reinstall", str(wheel)], check=True)
    print(f"installed {name}=={version} (pure Python) from {sdist.name}, sha256 {digest[:12]}…")


if __name__ == "__main__":
    main()

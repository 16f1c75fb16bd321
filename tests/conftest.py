import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent


def run(cmd, cwd=ROOT, check=True, timeout=900, env=None, **kw):
    """Run a command; on failure show its output in the assertion message."""
    full_env = {**os.environ, "PYTHONPATH": str(cwd), **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def embedded_data(tmp_path_factory):
    """The embedded ImageNet and COCO sets, built once per session by the real builder."""
    from pipeline.data.embedded import prepare

    out = tmp_path_factory.mktemp("embedded")
    for name in ("imagenet", "coco"):
        prepare(name, out / f"{name}-embedded", out / f"{name}-embedded.manifest.json")
    return out

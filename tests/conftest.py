import os
import re
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


def job_counts(stdout: str) -> dict[str, int]:
    """Jobs per rule from the "Job stats" table Snakemake prints."""
    counts = {}
    for line in stdout.split("Job stats:")[1].splitlines():
        m = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


TRACKED = ["Snakefile", "dvc.yaml", "smoke", ".dvcignore", "config", "pipeline", "models", "profiles", "envs"]


def run_smoke_targets(dst: Path, names, data_root, timeout: int) -> Path:
    """A fresh copy of the project (copy_project) in which Snakemake made `names` at smoke scale, two jobs at a
    time, each with one CPU thread (torch's default of every core would make the jobs, and the other test
    worker, spin against each other)."""
    project = copy_project(dst)
    run([BIN / "snakemake", "--profile", "profiles/local", "--cores", "2", *names, "--config", "scale=smoke",
         f"data_root={data_root}"], cwd=project, timeout=timeout, env={"OMP_NUM_THREADS": "1"})
    return project


def copy_project(dst: Path) -> Path:
    """The tracked project files in a fresh folder (sharing this checkout's .venv), to run Snakemake or DVC in
    without touching the checkout's results."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for name in TRACKED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / name)
    (dst / ".venv").symlink_to(ROOT / ".venv")
    return dst


@pytest.fixture(scope="session")
def root():
    return ROOT


def acquire(dataset: str, data_root: Path) -> Path:
    """Every data step for one dataset, in the Snakefile's order, through the step commands' entry point."""
    from pipeline.data import sources
    from pipeline.data.__main__ import main

    ds = sources.dataset(dataset, str(data_root))
    steps = [["publish", dataset]] if ds.embedded else []
    for src in ds.sources.values():
        steps += [[step, dataset, src.filename] for step in ("download", "verify", "extract")]
    for step in steps + [["prepare", dataset]]:
        assert main([*step, "--data-root", str(data_root)]) == 0, step
    return Path(sources.prepared(str(data_root), dataset))


@pytest.fixture(scope="session")
def embedded_data(tmp_path_factory):
    """The embedded ImageNet, COCO and ADE20K sets, published, downloaded, verified, extracted and prepared
    once per session by the pipeline's own steps."""
    out = tmp_path_factory.mktemp("data")
    for name in ("imagenet", "coco", "ade20k"):
        acquire(f"{name}-embedded", out)
    return out


@pytest.fixture(scope="session")
def chromium():
    """(browser, driver): Debian's Chromium and ChromeDriver, installed with apt when missing (needs root)."""
    import shutil

    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        if os.geteuid() != 0:
            pytest.skip("Chromium is not installed and installing it needs root: apt-get install chromium "
                        "chromium-driver")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env, timeout=900)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium", "chromium-driver"],
                       check=True, capture_output=True, env=env, timeout=1200)
        found = shutil.which("chromium"), shutil.which("chromedriver")
    return found


# Test files that take longest on the 2-core CI machine, longest first (seconds per file, measured in one
# fresh-clone run: 538, 385, 266, 236, 115, 107, 90, 79, 53); the rest follow in collection order. With
# `--dist loadfile --no-loadscope-reorder` (Makefile) each worker takes the longest file left, so that no long
# file starts last and keeps one worker busy after the other has finished.
LONGEST_FIRST = ["test_project_tables.py", "test_slurm.py", "test_dvcgen.py", "test_models.py",
                 "test_pretrain.py", "test_released.py", "test_tables_smoke.py", "test_bench.py",
                 "test_gpu_check.py"]


def pytest_collection_modifyitems(items):
    place = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items[:] = sorted(items, key=lambda item: place.get(item.path.name, len(place)))

"""Snakefile, environment files and set-up: they agree with each other and with the config."""

import os
import subprocess

import pytest

from conftest import BIN, PYTHON, ROOT, job_counts, run
from pipeline import registry


def test_dry_run_demo_lists_the_whole_dag(tmp_path):
    proc = run([BIN / "snakemake", "--profile", "profiles/local", "-n", "demo", "--config",
                f"data_root={tmp_path}", "scale=smoke", "smoke_profile=demo", "--directory", str(ROOT)])
    # 3 embedded sets published as their 1 + 4 + 3 official archives, each downloaded, verified and extracted;
    # the demo is PVT Table 4's PVT-Tiny 1x row, each job with its settings file resolved first.
    assert job_counts(proc.stdout) == {"publish_embedded": 3, "download": 8, "verify": 8, "extract": 8,
                                        "prepare": 3, "resolve_pretrain_settings": 1, "resolve_dense_settings": 2,
                                        "pretrain": 1, "finetune": 1, "evaluate": 1, "gather_demo": 1, "report_pvt": 1,
                                        "demo": 1}
    for path in ("results/pretrain/imagenet-embedded/pvt_tiny/pvt/seed0/model.pth",
                 "results/finetune/coco-embedded/mask_rcnn/pvt_tiny/pvt_mask_rcnn/1x/seed0/model_final.pth",
                 "results/evaluate/coco-embedded/mask_rcnn/pvt_tiny/pvt_mask_rcnn/1x/seed0/metrics.json",
                 "results/evaluate/coco-embedded/mask_rcnn/pvt_tiny/pvt_mask_rcnn/1x/seed0/settings.yaml",
                 "results/tables/smoke/demo.json", "reports/smoke/demo.md", "reports/smoke/demo.html"):
        assert path in proc.stdout


def test_demo_outside_smoke_scale_is_one_line():
    proc = run([BIN / "snakemake", "--profile", "profiles/local", "-n", "demo"], check=False)
    assert proc.returncode != 0
    line = next(l for l in (proc.stdout + proc.stderr).splitlines() if "the demo runs at smoke scale" in l)
    assert "--config scale=smoke smoke_profile=demo" in line


def test_bad_config_value_is_one_clear_error():
    proc = run([BIN / "snakemake", "--profile", "profiles/local", "-n", "demo", "--config", "paper=pvtt"],
               check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    line = next(l for l in out.splitlines() if "pvtt" in l)
    assert "field 'paper'" in line and "'pvt'" in line and "hornet" in line


def test_exported_lock_matches_uv_lock():
    uv = next((ROOT / ".cache").glob("uv-*/bin/uv"))
    proc = run([uv, "export", "--frozen", "--format", "requirements-txt", "--no-emit-project", "--quiet"])
    strip = lambda text: [l for l in text.splitlines() if not l.startswith("#")]  # noqa: E731
    assert strip(proc.stdout) == strip((ROOT / "envs" / "requirements.lock.txt").read_text())
    assert "-r requirements.lock.txt" in (ROOT / "envs" / "environment.yml").read_text()


def test_setup_is_done_and_a_second_run_does_nothing():
    # `make -q` exits 0 only when the target is up to date: nothing would be re-installed or re-downloaded.
    assert subprocess.run(["make", "-q", "setup"], cwd=ROOT).returncode == 0


def test_pinned_versions_are_installed():
    import detectron2
    import snakemake
    import torch
    import torchvision

    assert torch.__version__.startswith("2.13.0") and torchvision.__version__.startswith("0.28.0")
    assert detectron2.__version__ == "0.6"
    assert snakemake.__version__.startswith("9.")
    out = run([PYTHON, "-m", "dvc", "version"]).stdout
    assert out.startswith("DVC version: 3.") and "ssh" in out.split("Supports:")[1].split("Config:")[0]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_seeds_from_the_command_line_are_taken_as_meant():
    # snakemake's --config gives seeds=0 as an int and seeds=[0,1] as a list of strings.
    config = registry.load_yaml(registry.CONFIG_DIR / "config.yaml")
    for given in (0, "0,1", ["0", "1"], "[0,1]", [0, 1]):
        seeds = registry.check_config({**config, "seeds": given})["seeds"]
        assert seeds == ([0] if given == 0 else [0, 1])
    with pytest.raises(registry.ConfigError, match="field 'seeds.0': 'a' is not of type 'integer'"):
        registry.check_config({**config, "seeds": ["a"]})


def test_setup_compiles_the_environment_bytecode():
    # Python only reads bytecode where PYTHONDONTWRITEBYTECODE is set: without it every process (each Snakemake
    # start, each job) compiles what it imports again.
    import importlib.util

    import snakemake.cli

    assert os.path.exists(importlib.util.cache_from_source(snakemake.cli.__file__))

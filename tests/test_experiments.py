"""Paper tables as Snakemake targets: every target's DAG, `table<N>` resolution, not-reproduced tables, and the
settings each job gets at full and smoke scale."""

import re

import pytest

from conftest import BIN, ROOT, copy_project, job_counts, run
from pipeline import experiments, registry
from pipeline.data import sources


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project with no results yet, so each dry run lists every job."""
    return copy_project(tmp_path_factory.mktemp("dag") / "project")


def _dry_run(project, *targets, config=(), check=True):
    return run([BIN / "snakemake", "--profile", "profiles/local", "-n", *targets, "--config", "data_root=data",
                *config], cwd=project, check=check)


def _outputs(stdout: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^\s+output: (.+)$", stdout, re.M)}


def test_every_reproducible_table_has_a_dag(project):
    targets = sorted(experiments.reproducible())
    proc = _dry_run(project, *targets)
    counts = job_counts(proc.stdout)
    assert counts["gather_table"] == len(targets)
    assert all(counts[t] == 1 for t in targets)
    # PVT's tables are numbered in the paper: pvt_table2 ... pvt_table11, less the two without a framework.
    assert {t for t in targets if t.startswith("pvt_")} == {f"pvt_table{n}" for n in (2, 3, 4, 5, 8, 9, 10, 11)}
    for name in ("hornet_imagenet", "hornet_coco_cascade", "hornet_ade20k_upernet", "botnet_coco_schedules",
                 "botnet_vs_nonlocal", "lvt_ade20k", "lvt_coco_panoptic", "patchconvnet_imagenet",
                 "patchconvnet_resnet50_attnpool"):
        assert name in targets


def test_pvt_table4_is_four_pvt_variants_and_five_resnets_at_1x_and_3x(project):
    # PVT Table 4: PVT-T/S/M/L and R18, R50, R101, X101-32x4d, X101-64x4d, each with the 1x and 3x+MS schedules.
    proc = _dry_run(project, "pvt_table4")
    counts = job_counts(proc.stdout)
    assert (counts["pretrain"], counts["import_weights"]) == (4, 5)
    assert counts["finetune"] == counts["evaluate"] == 9 * 2
    outputs = _outputs(proc.stdout)
    for backbone in ("pvt_tiny", "pvt_small", "pvt_medium", "pvt_large", "resnet18_torchvision",
                     "resnext101_64x4d_torchvision"):
        for schedule in ("1x", "3x_ms"):
            assert f"results/evaluate/coco/mask_rcnn/{backbone}/pvt_mask_rcnn/{schedule}/seed0/metrics.json" in outputs
    assert "results/pretrain/imagenet/resnet50_torchvision/supplied/seed0/model.pth" in outputs

    by_number = _dry_run(project, "table4", config=["paper=pvt"])
    assert _outputs(by_number.stdout) == outputs


def test_smoke_scale_keeps_the_graph_and_uses_the_embedded_data(project):
    full = job_counts(_dry_run(project, "pvt_table5").stdout)
    proc = _dry_run(project, "pvt_table5", config=["scale=smoke"])
    smoke = job_counts(proc.stdout)
    for rule in ("pretrain", "import_weights", "finetune", "evaluate", "gather_table", "pvt_table5"):
        assert smoke[rule] == full[rule]
    outputs = _outputs(proc.stdout)
    assert "results/evaluate/ade20k-embedded/semantic_fpn/pvt_tiny/pvt_semantic_fpn/80k/seed0/metrics.json" in outputs
    assert not any("/ade20k/" in o or "/imagenet/" in o for o in outputs)


def test_unverified_table_number_is_announced(project):
    proc = _dry_run(project, "table2", config=["paper=hornet"])
    out = proc.stdout + proc.stderr
    assert "not verified" in out and "hornet_coco_cascade" in out and "hornet_ade20k_upernet" in out


def test_not_reproduced_table_says_why_in_one_line(project):
    proc = _dry_run(project, "pvt_table6", check=False)
    assert proc.returncode != 0
    line = next(l for l in (proc.stdout + proc.stderr).splitlines() if "not reproduced" in l)
    assert "pvt_table6" in line and "DETR" in line


def test_every_row_of_a_targeted_table_is_run_or_says_why():
    for exp in experiments.experiments().values():
        table = registry.table(exp.paper, exp.table)
        assert len(exp.runs) + len(exp.skipped) == len(table["rows"]), exp.target
        assert all(why.strip() for _, why in exp.skipped)


def test_baselines_without_a_recipe_use_supplied_weights():
    assert experiments.default_pretrain("resnet50_torchvision") == experiments.SUPPLIED
    assert experiments.default_pretrain("pvt_tiny") == "pvt"
    assert experiments.default_pretrain("resnet50_baseline") == "botnet"


def test_missing_user_weights_fail_in_one_line_with_the_fix(tmp_path):
    proc = run([ROOT / ".venv/bin/python", "-m", "pipeline.weights", "--backbone", "resnet50_torchvision",
                "--output", str(tmp_path / "m.pth")], check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pretrained_weights.resnet50_torchvision" in lines[0]


def test_smoke_settings_shrink_length_and_sizes_only():
    smoke = registry.load_yaml(registry.CONFIG_DIR / "config.yaml")["smoke"]
    full = experiments.finetune_settings("pvt_mask_rcnn", "pvt_tiny", "3x_ms", "full", smoke["finetune"], 0)
    small = experiments.finetune_settings("pvt_mask_rcnn", "pvt_tiny", "3x_ms", "smoke", smoke["finetune"], 0)
    assert (full["epochs"], full["steps"], full["short_side"], full["sample"]) == (36, [27, 33], [640, 800], "range")
    assert small["iters"] == smoke["finetune"]["iters"] and "epochs" not in small
    for key in ("task", "optimizer", "lr", "weight_decay", "warmup_ratio"):
        assert small[key] == full[key]
    seg = experiments.finetune_settings("pvt_semantic_fpn", "pvt_tiny", "80k", "full", smoke["finetune"], 0)
    # mmseg's ADE20K rescale: short side 512 x [0.5, 2.0], long side 2048 x 2.0, then a 512 crop (PVT §5.3).
    assert (seg["short_side"], seg["max_size"], seg["crop"], seg["poly_power"]) == ([256, 1024], 4096, 512, 0.9)
    pre = experiments.pretrain_settings("pvt", "pvt_tiny", "full", smoke["pretrain"], 0)
    assert (pre["epochs"], pre["batch_size"], pre["lr"]) == (300, 1024, pytest.approx(1e-3))  # PVT §5.1


def test_smoke_datasets_are_the_embedded_ones():
    ds = sources.datasets("data")
    assert experiments.dataset("coco", "smoke", ds) == "coco-embedded"
    assert experiments.dataset("ade20k", "full", ds) == "ade20k"
    with pytest.raises(registry.ConfigError, match="'scale'"):
        experiments.dataset("coco", "tiny", ds)


def test_user_weights_only_for_models_the_pipeline_does_not_pretrain():
    experiments.check_supplied_weights({"resnet50_torchvision": "/w/resnet50.pth"})
    with pytest.raises(registry.ConfigError, match="pretrained_weights.pvt_tiny.*resnet50_torchvision"):
        experiments.check_supplied_weights({"pvt_tiny": "/w/pvt_tiny.pth"})


@pytest.mark.parametrize("profile", ["profiles/local", "profiles/slurm"])
def test_unknown_target_is_one_line_with_the_valid_ones(project, profile):
    proc = run([BIN / "snakemake", "--profile", profile, "-n", "pvt_table12", "--config", "data_root=data"],
               cwd=project, check=False)
    assert proc.returncode != 0
    line = next(l for l in (proc.stdout + proc.stderr).splitlines() if "unknown target" in l)
    assert "'pvt_table12'" in line and "pvt_table4" in line and "table5" in line and "hornet_imagenet" in line


def test_slurm_profile_dry_run_lists_each_job_with_its_gpus(project):
    proc = run([BIN / "snakemake", "--profile", "profiles/slurm", "-n", "table5", "--config", "paper=pvt",
                "data_root=data"], cwd=project)
    # PVT §5.3: Semantic FPN on 4 GPUs; §5.1: ImageNet pretraining on 8.
    finetune = [b for b in proc.stdout.split("\n\n") if "rule finetune:" in b]
    assert finetune and all("gpu=4, nodes=1" in b for b in finetune)
    assert "gpu=8, nodes=1" in next(b for b in proc.stdout.split("\n\n") if "rule pretrain:" in b)

"""Paper tables as Snakemake targets (pipeline/targets.py, pipeline/jobs.py): every target's DAG, `table<N>`
resolution, not-reproduced tables, the datasets each scale reads."""

import re

import pytest

from conftest import BIN, ROOT, copy_project, job_counts, run
from pipeline import jobs, registry, targets
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
    names = sorted(targets.reproducible())
    proc = _dry_run(project, *names)
    counts = job_counts(proc.stdout)
    assert counts["gather_table"] == len(names)
    assert all(counts[t] == 1 for t in names)
    # PVT's tables are numbered in the paper: pvt_table2 ... pvt_table11, less the two without a framework.
    assert {t for t in names if t.startswith("pvt_")} == {f"pvt_table{n}" for n in (2, 3, 4, 5, 8, 9, 10, 11)}
    for name in ("hornet_imagenet", "hornet_coco_cascade", "hornet_ade20k_upernet", "botnet_coco_schedules",
                 "botnet_vs_nonlocal", "lvt_ade20k", "lvt_coco_panoptic", "patchconvnet_imagenet",
                 "patchconvnet_resnet50_attnpool"):
        assert name in names


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
    for exp in targets.experiments().values():
        table = registry.table(exp.paper, exp.table)
        assert len(exp.runs) + len(exp.skipped) == len(table["rows"]), exp.target
        assert all(why.strip() for _, why in exp.skipped)


def test_baselines_without_a_recipe_use_supplied_weights():
    assert targets.default_pretrain("resnet50_torchvision") == targets.SUPPLIED
    assert targets.default_pretrain("pvt_tiny") == "pvt"
    assert targets.default_pretrain("resnet50_baseline") == "botnet"


def test_missing_user_weights_fail_in_one_line_with_the_fix(tmp_path):
    proc = run([ROOT / ".venv/bin/python", "-m", "pipeline.weights", "--backbone", "resnet50_torchvision",
                "--output", str(tmp_path / "m.pth")], check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pretrained_weights.resnet50_torchvision" in lines[0]


def test_smoke_datasets_are_the_embedded_ones():
    ds = sources.datasets("data")
    assert jobs.dataset("coco", "smoke", ds) == "coco-embedded"
    assert jobs.dataset("ade20k", "full", ds) == "ade20k"
    with pytest.raises(registry.ConfigError, match="'scale'"):
        jobs.dataset("coco", "tiny", ds)


def test_user_weights_only_for_models_the_pipeline_does_not_pretrain():
    targets.check_supplied_weights({"resnet50_torchvision": "/w/resnet50.pth"})
    with pytest.raises(registry.ConfigError, match="pretrained_weights.pvt_tiny.*resnet50_torchvision"):
        targets.check_supplied_weights({"pvt_tiny": "/w/pvt_tiny.pth"})


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


def test_a_config_value_holding_a_shell_command_is_data(project):
    """Rule commands quote what they interpolate: the value reaches the job as a (missing) file name."""
    (project / "inject.yaml").write_text("pretrained_weights:\n  resnet50_torchvision: \"'; touch injected; '\"\n")
    target = "results/pretrain/imagenet/resnet50_torchvision/supplied/seed0/model.pth"
    proc = run([BIN / "snakemake", "--profile", "profiles/local", "--configfiles", "config/config.yaml",
                "inject.yaml", "--config", "data_root=data", "--", target], cwd=project, check=False)
    assert proc.returncode != 0
    assert not (project / "injected").exists() and not list(project.rglob("injected"))
    assert "'; touch injected; ': checkpoint file not found" in proc.stdout + proc.stderr


def test_an_unknown_backbone_in_a_path_target_is_one_line(project):
    proc = _dry_run(project, "results/pretrain/imagenet/pvt_tinyy/pvt/seed0/model.pth", check=False)
    assert proc.returncode != 0
    line = next(l for l in (proc.stdout + proc.stderr).splitlines() if "unknown backbone" in l)
    assert "'pvt_tinyy'" in line and "pvt_tiny," in line


def test_a_malformed_config_file_names_its_line(tmp_path):
    project = copy_project(tmp_path / "project")
    config = project / "config" / "config.yaml"
    config.write_text(config.read_text() + "cluster:\n  executor: local\n   bad: [\n")
    proc = run([BIN / "snakemake", "-n", "pvt_table4"], cwd=project, check=False)
    line = next(l for l in (proc.stdout + proc.stderr).splitlines() if "is not valid YAML" in l)
    assert proc.returncode != 0 and f"{config}: line {len(config.read_text().splitlines())} is not" in line


def test_a_supplied_baseline_without_weights_starts_random_at_smoke_scale(project):
    """An empty `pretrained_weights` entry reaches the job as an empty value (a quoted empty string)."""
    target = "results/pretrain/imagenet-embedded/resnet18_torchvision/supplied/seed0/model.pth"
    run([BIN / "snakemake", "--profile", "profiles/local", "--config", "data_root=data", "scale=smoke", "--", target],
        cwd=project)
    assert (project / target).exists()

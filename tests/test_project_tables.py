"""The project's own tables (config/papers/project.yaml): every family under one recipe, several seeds, ranked
only where the seeds' intervals allow. The three tables run end to end at smoke scale with 2 seeds."""

import json
import math
import re

import pytest

from conftest import BIN, PYTHON, copy_project, job_counts, run, run_smoke_targets
from pipeline import jobs, registry, targets
from pipeline.data import sources

TABLES = {"fair_imagenet": ["top1", "top5"], "fair_coco_mask_rcnn_1x": ["box_AP", "mask_AP"],
          "fair_ade20k_upernet_160k": ["mIoU"]}
BACKBONES = ["pvt_small", "hornet_tiny_7x7", "hornet_tiny_gf", "patchconvnet_s60", "botnet50", "resnet50_baseline",
             "lvt"]


def _config(**over):
    return {**registry.load_yaml(registry.CONFIG_DIR / "config.yaml"), **over}


def test_project_tables_are_targets_with_three_seeds_and_no_paper_values():
    for target in TABLES:
        exp = targets.experiments()[target]
        assert exp.paper == "project" and exp.seeds == 3
        assert [r.backbone for r in exp.runs] == BACKBONES
        assert {r.pretrain for r in exp.runs} == {"fair"}
        rows = registry.table("project", exp.table)["rows"]
        assert all(r["evidence"] == "project" and set(r["metrics"].values()) == {None} for r in rows)
    assert jobs.table_seeds("fair_imagenet", _config(seeds=[0])) == [0, 1, 2]
    assert jobs.table_seeds("fair_imagenet", _config(seeds=[5])) == [5, 6, 7]
    assert jobs.table_seeds("fair_imagenet", _config(seeds=[0], scale="smoke")) == [0, 1]  # smoke profile `seeds: 2`
    assert jobs.table_seeds("pvt_table2", _config(seeds=[0])) == [0]  # the papers' tables keep the config's


def test_coco_table_pretrains_fine_tunes_and_evaluates_each_backbone_and_seed():
    datasets = sources.datasets("data")
    found = jobs.jobs("fair_coco_mask_rcnn_1x", "full", datasets, [0, 1, 2])
    by_rule = {rule: sorted((j.backbone, j.seed) for j in found if j.rule == rule)
               for rule in ("pretrain", "finetune", "evaluate")}
    expected = sorted((b, s) for b in BACKBONES for s in (0, 1, 2))
    assert by_rule == {"pretrain": expected, "finetune": expected, "evaluate": expected}
    # The fine-tuning recipe names its pretraining: the ImageNet table's weights, not each family's own.
    assert all("/fair/" in j.dir for j in found if j.rule == "pretrain")
    imagenet = {j.output for j in jobs.jobs("fair_imagenet", "full", datasets, [0, 1, 2])}
    assert {j.output for j in found if j.rule == "pretrain"} <= imagenet


def test_dry_run_lists_one_job_per_backbone_and_seed_and_plan_prices_it(tmp_path):
    project = copy_project(tmp_path / "project")
    counts = job_counts(run([BIN / "snakemake", "-n", "fair_coco_mask_rcnn_1x"], cwd=project).stdout)
    assert (counts["pretrain"], counts["finetune"], counts["evaluate"]) == (21, 21, 21)
    out = run([PYTHON, "-m", "pipeline", "plan", "fair_imagenet"], cwd=project).stdout
    # 21 pretraining jobs on 8 GPUs for 72 h each (config/recipes/pretrain.yaml `fair`).
    assert "scale full: 22 jobs to run (21 on GPUs), 12,096 GPU-hours at their wall-time limits" in out


@pytest.fixture(scope="module")
def smoke(embedded_data, tmp_path_factory):
    """The three project tables at smoke scale, 2 seeds each, in one Snakemake run (pretraining shared)."""
    return run_smoke_targets(tmp_path_factory.mktemp("fair") / "project", TABLES, embedded_data, 3000)


def test_each_project_table_runs_with_two_seeds_and_gives_intervals(smoke):
    for target, metrics in TABLES.items():
        doc = json.loads((smoke / "results/tables/smoke" / f"{target}.json").read_text())
        assert doc["seeds"] == [0, 1] and [r["backbone"] for r in doc["rows"]] == BACKBONES
        for row in doc["rows"]:
            for name in metrics:
                values = [row["per_seed"][s][name] for s in ("0", "1")]
                summary = row["summary"][name]
                assert summary["n"] == 2 and summary["mean"] == pytest.approx(sum(values) / 2)
                lo, hi = summary["ci95"]
                assert lo <= summary["mean"] <= hi and math.isfinite(hi - lo)
            assert row["pretrain_images_per_s"] > 0
        pvt = doc["rows"][0]["backbone_cost"]
        # PVT-Small: 24.486M parameters (official code recount, pvt.md), 3.8 GMACs (paper Table 2).
        assert (round(pvt["params_m"], 3), round(pvt["macs_g"], 1)) == (24.486, 3.8)
        for name in metrics:
            comp = doc["comparison"][name]
            assert set(comp["ranks"]) == set(BACKBONES)
            assert len(comp["pairwise"]) == 7 * 6 // 2


def test_each_project_report_ranks_names_recipe_differences_and_plots(smoke):
    reports = smoke / "reports" / "smoke"
    for target, metrics in TABLES.items():
        text = (reports / f"{target}.md").read_text()
        assert "comparison report" in text and "## Ranking across families" in text
        for name in metrics:
            assert f"### {name}" in text
        assert re.search(r"^\| [0-9-]+ \| PVT-Small \| -?\d+\.\d\d ± \d+\.\d\d \(n=2\) \| \[", text, re.M)
        assert re.search(r"^- PVT-Small − HorNet-T 7x7: [+-]\d+\.\d\d .*→ ", text, re.M)
        # HorNet's own recipe trains at batch 4096 with lr 4e-3 (config/recipes/pretrain.yaml `hornet`).
        assert "pretrain: `batch_size` 1024 here, 4096 in its paper's `hornet` recipe" in text
        figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
        assert f"{target}/{metrics[0]}_vs_macs.png" in figures and f"{target}/{metrics[0]}_vs_throughput.png" in figures
    coco = (reports / "fair_coco_mask_rcnn_1x.md").read_text()
    assert "finetune: its paper (hornet) has no mask_rcnn recipe to compare with" in coco
    # BoTNet's own Mask R-CNN recipe (config/recipes/finetune.yaml `botnet_mask_rcnn`) decays weights by 4e-5.
    assert "finetune: `weight_decay` 0.0001 here, 4e-05 in its paper's `botnet_mask_rcnn` recipe" in coco


def test_with_released_weights_the_dense_tables_start_from_them_where_they_exist():
    from pipeline import released

    found = jobs.jobs("fair_coco_mask_rcnn_1x", "full", sources.datasets("data"), [0], pretrain_source="released")
    imported = {j.backbone for j in found if j.rule == "import_released"}
    pretrained = {j.backbone for j in found if j.rule == "pretrain"}
    assert imported == {b for b in BACKBONES if released.for_backbone(b)} and imported
    assert pretrained == set(BACKBONES) - imported
    assert all("/fair/" in j.dir for j in found if j.rule == "pretrain")

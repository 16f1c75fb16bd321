"""Paper tables run for real at smoke scale on a CPU: one each for classification (lvt_imagenet), detection
(pvt_table8, RetinaNet), instance segmentation (pvt_table10, Mask R-CNN), semantic segmentation (lvt_ade20k,
SegFormer) and panoptic segmentation (lvt_coco_panoptic, Panoptic FPN), through the same DAG as full scale."""

import json
import math

from conftest import BIN, copy_project, run

# Each target's measured metric names, as the registry rows name them.
EXPECTED = {
    "lvt_imagenet": ("lvt_lvt_cls", ["top1"]),
    "pvt_table8": ("pvt_small", ["box_AP", "box_AP50", "box_AP75", "box_APS", "box_APM", "box_APL"]),
    "pvt_table10": ("pvt_small", ["mask_AP", "mask_AP50", "mask_AP75"]),
    "lvt_ade20k": ("segformer_lvt", ["mIoU"]),
    "lvt_coco_panoptic": ("panoptic_fpn_lvt_val", ["PQ", "PQ_th", "PQ_st"]),
}


def test_one_table_per_task_runs_at_smoke_scale(embedded_data, tmp_path):
    project = copy_project(tmp_path / "project")
    run([BIN / "snakemake", "--profile", "profiles/local", "--cores", "2", *EXPECTED, "--config", "scale=smoke",
         f"data_root={embedded_data}"], cwd=project, timeout=2400)
    for target, (row_id, metrics) in EXPECTED.items():
        doc = json.loads((project / "results" / "tables" / f"{target}.json").read_text())
        assert doc["scale"] == "smoke" and doc["target"] == target
        row = next(r for r in doc["rows"] if r["id"] == row_id)
        for name in metrics:
            value = row["measured"][name]
            assert isinstance(value, float) and math.isfinite(value), (target, name, value)
        assert len(row["settings_sha256"]) == 64
        for files in row["settings"].values():
            assert all((project / f).exists() for f in files.values())
    panoptic = json.loads((project / "results/tables/lvt_coco_panoptic.json").read_text())
    assert [r["id"] for r in panoptic["not_run"]] == ["panoptic_fpn_lvt_test_dev"]

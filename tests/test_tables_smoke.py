"""Paper tables run for real at smoke scale on a CPU: one each for classification (lvt_imagenet), detection
(pvt_table8, RetinaNet), instance segmentation (pvt_table10, Mask R-CNN), semantic segmentation (lvt_ade20k,
SegFormer) and panoptic segmentation (lvt_coco_panoptic, Panoptic FPN), through the same DAG as full scale,
each ending in its report; one report opened in a real headless browser, and Snakemake's own report."""

import base64
import json
import math
import re

import pytest

from conftest import BIN, ROOT, run, run_smoke_targets
from webdriver import Chromium

# Each target's measured metric names, as the registry rows name them.
EXPECTED = {
    "lvt_imagenet": ("lvt_lvt_cls", ["top1"]),
    "pvt_table8": ("pvt_small", ["box_AP", "box_AP50", "box_AP75", "box_APS", "box_APM", "box_APL"]),
    "pvt_table10": ("pvt_small", ["mask_AP", "mask_AP50", "mask_AP75"]),
    "lvt_ade20k": ("segformer_lvt", ["mIoU"]),
    "lvt_coco_panoptic": ("panoptic_fpn_lvt_val", ["PQ", "PQ_th", "PQ_st"]),
}
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def project(embedded_data, tmp_path_factory):
    """The five tables run once at smoke scale; the tests below read what they left."""
    return run_smoke_targets(tmp_path_factory.mktemp("tables") / "project", EXPECTED, embedded_data, 2400)


def test_one_table_per_task_runs_at_smoke_scale(project):
    for target, (row_id, metrics) in EXPECTED.items():
        doc = json.loads((project / "results/tables/smoke" / f"{target}.json").read_text())
        assert doc["scale"] == "smoke" and doc["target"] == target
        row = next(r for r in doc["rows"] if r["id"] == row_id)
        for name in metrics:
            value = row["measured"][name]
            assert isinstance(value, float) and math.isfinite(value), (target, name, value)
        assert len(row["settings_sha256"]) == 64
        for files in row["settings"].values():
            assert all((project / f).exists() for f in files.values())
    panoptic = json.loads((project / "results/tables/smoke/lvt_coco_panoptic.json").read_text())
    assert [r["id"] for r in panoptic["not_run"]] == ["panoptic_fpn_lvt_test_dev"]


def test_each_table_ends_in_its_report_with_plots_and_the_index(project):
    reports = project / "reports" / "smoke"  # smoke-scale tables' reports
    for target, (row_id, metrics) in EXPECTED.items():
        text = (reports / f"{target}.md").read_text()
        assert "SMOKE SCALE" in text and f"(`{row_id}`)" in text
        for name in metrics:
            assert re.search(rf"^\| [^|]+ \| {name} \| [^|]+ \| -?\d+\.\d \(n=1\) \| [^|]+ \| [^|]+ \| smoke \|$",
                             text, re.M), (target, name)
        assert "Deviations from the paper's recipe:" in text and "(smoke profile `quick`)" in text
        assert "min wall" in text and "plan limit" in text  # the job's own timing beside the plan's
        figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
        assert f"{target}/delta.png" in figures and any("curves_" in f for f in figures)
        assert all((reports / f).stat().st_size > 1000 for f in figures)
    index = (project / "reports" / "README.md").read_text()
    for target in EXPECTED:
        assert re.search(rf"^\| {target} \(smoke\) \| .* \| smoke: 1 of \d+ rows ran \| \[smoke/{target}.md\]", index,
                         re.M)
        assert re.search(rf"^\| {target} \| .* \| not run \|", index, re.M)  # its full-scale line
    assert re.search(r"^\| pvt_table2 \| .* \| not run \|", index, re.M)
    # header and a row each
    assert (project / "reports" / "index.html").read_text().count("<tr>") == index.count("\n| ")


def test_a_report_renders_in_a_headless_browser_with_every_image(project, chromium):
    page = project / "reports" / "smoke" / "pvt_table8.html"
    with Chromium(*chromium) as browser:
        browser.open(page.as_uri())
        images = browser.script("return [...document.images].map(i => [i.complete, i.naturalWidth]);")
        rows = browser.script("return [...document.querySelector('table').rows].slice(1)"
                              ".map(r => [r.cells[0].innerText, r.cells[1].innerText, r.cells[6].innerText]);")
        shot = browser.screenshot()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "pvt_table8.png").write_bytes(base64.b64decode(shot))
    assert images and all(done and width > 0 for done, width in images), images
    table = json.loads((project / "results/tables/smoke/pvt_table8.json").read_text())
    expected = [(r["row"], m) for r in table["rows"] for m in r["paper"]]
    assert [(row, metric) for row, metric, _ in rows] == expected
    assert {verdict for _, _, verdict in rows} == {"smoke"}


def test_snakemake_writes_its_own_report_of_a_smoke_target(project, embedded_data):
    out = project / "snakemake-report.html"
    run([BIN / "snakemake", "--profile", "profiles/local", "--report", str(out), "pvt_table8", "--config",
         "scale=smoke", f"data_root={embedded_data}"], cwd=project, timeout=600)
    text = out.read_text(errors="replace")
    assert out.stat().st_size > 10_000 and "pvt_table8" in text

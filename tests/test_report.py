"""pipeline/report.py: verdicts, Δ and bands from a table JSON whose numbers the test chooses, the Markdown and
HTML forms, and the index."""

import json
import re

import pytest

from pipeline import report

# Bands as config/report.yaml states them, with their sources: top-1 ±0.5 (Picard 2021), AP ±0.3 (ViTDet).
CONFIG = report.report_config()


def _row(rid, paper, per_seed, kind="finetune"):
    return {"id": rid, "row": rid.upper(), "kind": kind, "backbone": "pvt_tiny", "pretrain": "pvt",
            "recipe": None, "schedule": None, "baseline": None, "paper": paper,
            "measured": {}, "per_seed": per_seed, "all_measured": {s: dict(v) for s, v in per_seed.items()},
            "settings": {}, "settings_sha256": "0" * 64, "evidence": "primary-paper", "source": "arXiv test",
            "paper_cost": {}, "plan": {}}


def _table(rows, scale="full", target="pvt_table4"):
    return {"target": target, "paper": "pvt", "table": "table4", "title": "Table 4", "paper_name": "PVT",
            "arxiv": "2102.12122", "number": {"value": 4, "verified": True, "note": None}, "scale": scale,
            "seeds": [0, 1, 2], "code_version": "abc123", "gathered": "2026-12-01T00:00:00Z", "rows": rows,
            "not_run": [{"id": "r50", "row": "ResNet50", "why": "quoted"}]}


def test_bands_come_from_the_config_with_their_sources():
    top1, ap = report.band("top1", "pvt_table2"), report.band("mask_AP75", "pvt_table4")
    assert (top1.kind, top1.width, ap.kind, ap.width) == ("top1", 0.5, "ap", 0.3)
    assert "arXiv:2109.08203" in top1.source and "ViTDet" in ap.source
    assert report.band("throughput_im_s", "pvt_table2") is None
    widened = report.band("box_AP", "pvt_table4", {**CONFIG, "widen": {"pvt_table4": 2.0}})
    assert widened.width == pytest.approx(0.6)


def test_verdicts_delta_and_spread_over_seeds():
    rows = [
        _row("within", {"box_AP": 36.7}, {"0": {"box_AP": 36.5}, "1": {"box_AP": 36.8}, "2": {"box_AP": 36.5}}),
        _row("low", {"box_AP": 36.7}, {"0": {"box_AP": 35.0}, "1": {"box_AP": 35.2}, "2": {"box_AP": 35.4}}),
        _row("high", {"box_AP": 36.7}, {"0": {"box_AP": 37.5}, "1": {}, "2": {}}),
        _row("nopaper", {"box_AP": None}, {"0": {"box_AP": 30.0}}),
        _row("unmeasured", {"PQ": 40.0}, {"0": {"box_AP": 1.0}}),
        _row("notrun", {"box_AP": 36.7}, {"0": {}}),
        _row("cost", {"time_ms_per_image": 100.0}, {"0": {"time_ms_per_image": 130.0}}),
    ]
    got = {r.row["id"]: r.judgements[0] for r in
           [report.RowReport(row, report.judge_row(row, "pvt_table4", "full"), [], [], [], {}) for row in rows]}
    assert got["within"].verdict == "reproduced" and got["within"].mean == pytest.approx(36.6)
    assert got["within"].delta == pytest.approx(-0.1) and got["within"].std == pytest.approx(0.1732, abs=1e-4)
    assert got["low"].verdict == "below" and got["low"].delta == pytest.approx(-1.5)
    assert got["high"].verdict == "above" and got["high"].values == [37.5] and got["high"].std is None
    assert got["nopaper"].verdict == "paper value not available"
    assert got["unmeasured"].verdict == "not measured" and "does not measure `PQ`" in got["unmeasured"].why
    assert got["notrun"].verdict == "not measured" and got["notrun"].why == "no run has finished yet"
    assert got["cost"].verdict == "no band" and got["cost"].delta == pytest.approx(30.0)


def test_smoke_scale_reports_say_so_and_give_no_verdict(tmp_path):
    rows = [_row("pvt_tiny@1x", {"box_AP": 36.7}, {"0": {"box_AP": 0.0}})]
    table = tmp_path / "results" / "tables" / "pvt_table4.json"
    table.parent.mkdir(parents=True)
    table.write_text(json.dumps(_table(rows, scale="smoke")))
    md, html = report.write_table_report(table, tmp_path / "reports")
    text = md.read_text()
    assert "SMOKE SCALE" in text and "| PVT_TINY@1X | box_AP | 36.7 | 0.0 (n=1) | -36.7 | ±0.3 | smoke |" in text
    assert "ResNet50 (`r50`): quoted" in text
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "SMOKE SCALE" in page and "<td>smoke</td>" in page
    assert not re.search(r"""src=['"](?!data:)""", page)  # every image inline: the page needs no other file


def test_index_lists_every_table_with_its_status(tmp_path):
    results, reports = tmp_path / "results", tmp_path / "reports"
    (results / "tables").mkdir(parents=True)
    rows = [_row("a", {"box_AP": 36.7}, {"0": {"box_AP": 36.6}}), _row("b", {"box_AP": 40.0}, {"0": {"box_AP": 38.0}})]
    (results / "tables" / "pvt_table4.json").write_text(json.dumps(_table(rows)))
    md, html = report.write_index(results, reports)
    lines = md.read_text().splitlines()
    assert "| pvt_table4 | pvt Table 4 | 1 of 2 rows reproduced | – | 2026-12-01T00:00:00Z | abc123 |" in lines
    assert any(line.startswith("| pvt_table2 | pvt Table 2 | not run |") for line in lines)
    assert "<td>1 of 2 rows reproduced</td>" in html.read_text()

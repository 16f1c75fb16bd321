"""The paper registry (config/papers) and `python -m pipeline tables`."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import PYTHON, ROOT, run
from pipeline import registry

SHARED_TABLES = ROOT.parent / "shared" / "papers" / "tables.yaml"


def test_all_papers_load_and_validate():
    docs = registry.papers()
    assert set(docs) == {"botnet", "pvt", "hornet", "lvt", "patchconvnet", "project"}  # five papers, our tables
    for key, doc in docs.items():
        assert doc["paper"] == key
        assert doc["tables"]


@pytest.mark.skipif(not SHARED_TABLES.exists(), reason="reference notes (../shared) not beside this checkout")
def test_registry_holds_every_reference_row_with_its_numbers():
    reference = yaml.safe_load(SHARED_TABLES.read_text())["rows"]
    names = {doc["name"]: key for key, doc in registry.papers().items()}
    ours = {}
    for key, doc in registry.papers().items():
        if key == registry.PROJECT:  # the project's own tables: no paper numbers to hold
            continue
        for t in doc["tables"]:
            for r in t["rows"]:
                if r["evidence"] == "secondary-topic-only":  # rows of a table whose numbers were not found
                    assert all(v is None for v in r["metrics"].values())
                    continue
                ours.setdefault((key, t["title"], r["row"]), []).append(r)
    assert sum(len(v) for v in ours.values()) == len(reference)
    for ref in reference:
        candidates = ours[(names[ref["paper"]], ref["table"], ref["row"])]
        match = [r for r in candidates if r["metrics"] == ref["metrics"] and r.get("schedule") == ref.get("schedule")]
        assert match, f"{ref['paper']} {ref['table']} {ref['row']}: numbers differ from the reference notes"
        r = match[0]
        for field in ("params_m", "flops_g", "evidence", "source", "task", "dataset"):
            assert r.get(field) == ref.get(field), (ref["row"], field)


def _write_bad(tmp_path: Path, mutate) -> Path:
    papers = tmp_path / "papers"
    shutil.copytree(registry.PAPERS_DIR, papers)
    doc = yaml.safe_load((papers / "pvt.yaml").read_text())
    mutate(doc)
    (papers / "pvt.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return papers


def _table4_row(doc):
    """PVT Table 4's PVT-Tiny 1x row with every field written out (the table's row_defaults in each row)."""
    t = next(t for t in doc["tables"] if t["id"] == "table4")
    defaults = t.pop("row_defaults", {})
    t["rows"][:] = [{**defaults, **r} for r in t["rows"]]
    return next(r for r in t["rows"] if r["id"] == "pvt_tiny@1x")


BAD_ENTRIES = {
    "metric not a number": (lambda d: _table4_row(d)["metrics"].update(box_AP="36.7%"),
                            ["pvt.yaml", "table 'table4' row 'pvt_tiny@1x'", "metrics.box_AP", "36.7%"]),
    "missing evidence": (lambda d: _table4_row(d).pop("evidence"),
                         ["pvt.yaml", "table 'table4' row 'pvt_tiny@1x'", "'evidence' is a required property"]),
    "misspelled field": (lambda d: _table4_row(d).update(paramz_m=32.9),
                         ["pvt.yaml", "table 'table4' row 'pvt_tiny@1x'", "paramz_m", "valid fields:", "params_m"]),
    "unknown evidence kind": (lambda d: _table4_row(d).update(evidence="hearsay"),
                              ["pvt.yaml", "table 'table4' row 'pvt_tiny@1x'", "field 'evidence'", "hearsay"]),
    "negative params": (lambda d: _table4_row(d).update(params_m=-1),
                        ["pvt.yaml", "row 'pvt_tiny@1x'", "field 'params_m'", "-1"]),
    "duplicate row id": (lambda d: next(t for t in d["tables"] if t["id"] == "table4")["rows"].append(
                             dict(_table4_row(d))),
                         ["pvt.yaml", "table 'table4' row 'pvt_tiny@1x'", "field 'id' is duplicated"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_schema_rejects_bad_entry_with_one_line(tmp_path, case):
    mutate, expected = BAD_ENTRIES[case]
    papers = _write_bad(tmp_path, mutate)
    with pytest.raises(registry.ConfigError) as err:
        registry.load_paper(papers / "pvt.yaml")
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (part, message)


def test_cli_reports_bad_registry_in_one_line(tmp_path):
    papers = _write_bad(tmp_path, lambda d: _table4_row(d)["metrics"].update(box_AP="n/a"))
    proc = run([PYTHON, "-m", "pipeline", "tables", "--registry", str(papers)], check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pvt.yaml" in lines[0] and "metrics.box_AP" in lines[0]


def test_cli_tables_lists_pvt_tables_2_to_11_with_numbers():
    proc = run([PYTHON, "-m", "pipeline", "tables", "--paper", "pvt"])
    out = proc.stdout
    for n in range(2, 12):
        assert f"pvt_table{n}: Table {n} " in out
    # Every PVT number in the registry is printed (Tables 2-11 and the README tables).
    for t in registry.paper("pvt")["tables"]:
        for r in t["rows"]:
            for metric, value in r["metrics"].items():
                if value is not None:
                    assert f"{metric} {value:g}" in out, (t["id"], r["id"], metric)


def test_cli_tables_json_is_the_validated_registry():
    proc = run([PYTHON, "-m", "pipeline", "tables", "--paper", "lvt", "--json"])
    assert json.loads(proc.stdout) == {"lvt": registry.paper("lvt")}

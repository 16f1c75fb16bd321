"""pipeline/bench.py: `python -m pipeline bench models` writes a row per model with same-run baselines."""

import json

from conftest import PYTHON, run


def test_bench_models_prints_and_writes_a_row_per_model(tmp_path):
    # One thread: the other test worker shares the two cores (the rows' layout is checked, not their speed).
    proc = run([PYTHON, "-m", "pipeline", "bench", "models", "--models", "pvt_tiny", "resnet50_baseline",
                "hornet_tiny_7x7",
                "--batch", "1", "--warmup", "1", "--repeats", "1", "--iters", "1", "--threads", "1",
                "--out", str(tmp_path)], timeout=900)
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| pvt_tiny", "| resnet50_baseline", "| hornet_tiny_7x7"]
    assert "(explicit attention)" in table[1] and "(resnet50)" in table[2]
    assert "(elementwise LayerNorm, channels-first)" in table[3]
    assert "official PVT v1 pvt_tiny" in table[1]
    data = json.loads((tmp_path / "models.json").read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert rows["pvt_tiny"]["params"] == 13_229_288  # PVT-Tiny, official code recount (pvt.md)
    assert rows["resnet50_baseline"]["channels_last"] is True and rows["pvt_tiny"]["channels_last"] is False
    assert rows["hornet_tiny_7x7"]["params"] == 22_409_512  # HorNet-T 7x7, official code recount (perf-anchors.md)
    assert data["yardstick"]["infer"]["median"] > 0
    assert (tmp_path / "models.md").read_text() in proc.stdout


def test_bench_rejects_unknown_models_in_one_line():
    proc = run([PYTHON, "-m", "pipeline", "bench", "models", "--models", "pvt_tinyy"], check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "pvt_tinyy" in proc.stderr


def test_committed_full_benchmark_lists_every_registered_variant():
    """reports/bench/all is the whole zoo; a new variant needs a new run (`--out reports/bench/all`)."""
    from pathlib import Path

    import models

    root = Path(__file__).resolve().parent.parent / "reports" / "bench" / "all"
    data = json.loads((root / "models.json").read_text())
    assert {r["model"] for r in data["rows"]} == set(models.list_models())
    table = (root / "models.md").read_text()
    assert all(f"| {name} |" in table for name in models.list_models())


def test_dense_mode_measures_the_feature_pyramid_at_detection_resolution(tmp_path):
    proc = run([PYTHON, "-m", "pipeline", "bench", "models", "--dense", "--models", "lvt", "--warmup", "0",
                "--repeats", "1", "--iters", "1", "--threads", "1", "--out", str(tmp_path)], timeout=900)
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    # The official headless LVT (3,430,180) less its four classification LayerNorms (1,088): tests/test_lvt.py.
    assert table[1].startswith(f"| lvt | 800x1216 | {(3_430_180 - 1_088) / 1e6:.3f}M |")
    assert table[1].endswith("(lvt (explicit attention)) |")
    row = json.loads((tmp_path / "models_dense.json").read_text())["rows"][0]
    assert row["dense"] and row["batch"] == 1 and row["baseline"]["img_size"] == [800, 1216]
    assert not (tmp_path / "models.md").exists()


def test_committed_dense_rows_cover_every_family_with_baselines():
    from pathlib import Path

    import models

    data = json.loads((Path(__file__).resolve().parent.parent / "reports" / "bench" / "models_dense.json").read_text())
    assert {models.family(r["model"]) for r in data["rows"]} >= {"pvt", "botnet", "hornet", "lvt", "patchconvnet"}
    assert all(r["dense"] and r["img_size"] == [800, 1216] and r["baseline"]["infer"]["median"] > 0
               for r in data["rows"])

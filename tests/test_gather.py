"""pipeline/gather.py: registry metric names from measured ones."""

import pytest

from pipeline.gather import measured_value


def test_registry_names_derive_from_measured_metrics():
    run = {"top1": 75.0, "box_AP": 40.0, "mask_AP": 37.0, "mIoU": 35.5}
    base = {"top1": 74.0, "box_AP": 38.5, "mask_AP": 36.0}
    assert measured_value("top1_err", run, None) == pytest.approx(25.0)   # PVT Table 2 reports 100 - top-1
    assert measured_value("box_ap", run, None) == 40.0                   # BoTNet rows spell it box_ap
    assert measured_value("mIoU_ss", run, None) == 35.5
    assert measured_value("box_ap_delta", run, base) == pytest.approx(1.5)
    assert measured_value("top1_delta_vs_avgpool", run, base) == pytest.approx(1.0)
    assert measured_value("mIoU_ms_flip", run, None) is None              # multi-scale flip testing is not run
    assert measured_value("box_ap_delta", run, None) is None

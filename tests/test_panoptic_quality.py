"""pipeline/panoptic_quality.py against PQ worked by hand from its definition (Kirillov et al. 2019, §4)."""

import numpy as np
import pytest

from pipeline.panoptic_quality import PQStat

THING, STUFF = 1, 2
CATEGORIES = {THING: True, STUFF: False}


def _canvas():
    gt = np.zeros((10, 10), np.uint32)
    gt[:, :5] = 1     # thing segment, 50 px
    gt[:, 5:] = 2     # stuff segment, 50 px
    return gt, [{"id": 1, "category_id": THING}, {"id": 2, "category_id": STUFF}]


def test_ground_truth_against_itself_is_perfect():
    gt, segs = _canvas()
    stat = PQStat()
    stat.add_image(gt, segs, gt.copy(), segs)
    assert stat.summary(CATEGORIES) == pytest.approx({"PQ": 100, "SQ": 100, "RQ": 100, "PQ_th": 100, "SQ_th": 100,
                                                      "RQ_th": 100, "PQ_st": 100, "SQ_st": 100, "RQ_st": 100})


def test_match_above_half_iou_and_a_miss():
    gt, segs = _canvas()
    pred = np.zeros_like(gt)
    pred[:, :4] = 7                    # thing: 40 of 50 px -> IoU 0.8, a true positive
    pred[:2, 5:] = 8                   # stuff: 10 of 50 px -> IoU 0.2: one false positive and one false negative
    stat = PQStat()
    stat.add_image(gt, segs, pred, [{"id": 7, "category_id": THING}, {"id": 8, "category_id": STUFF}])
    out = stat.summary(CATEGORIES)
    assert out["PQ_th"] == pytest.approx(80.0)          # 0.8 / (1 + 0 + 0)
    assert out["PQ_st"] == pytest.approx(0.0)            # 0 / (0 + 0.5 + 0.5)
    assert out["PQ"] == pytest.approx(40.0)
    assert out["RQ_st"] == 0.0 and out["SQ_th"] == pytest.approx(80.0)


def test_unlabeled_pixels_leave_the_union_and_excuse_false_positives():
    gt, segs = _canvas()
    gt[:, 8:] = 0                      # 20 unlabeled px; the stuff segment is now 30 px
    pred = gt.copy()
    pred[:, 8:] = 2                    # predicting stuff over the unlabeled part does not lower its IoU
    pred[0, 9] = 9                     # a 1-px prediction entirely on unlabeled ground truth is not a false positive
    stat = PQStat()
    stat.add_image(gt, segs, pred, segs + [{"id": 9, "category_id": THING}])
    assert stat.summary(CATEGORIES)["PQ"] == pytest.approx(100.0)

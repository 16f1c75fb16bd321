"""Panoptic quality (PQ, SQ, RQ; Kirillov et al. 2019, §4) as a detectron2 evaluator.

detectron2's own `COCOPanopticEvaluator` needs `panopticapi`, which is not on PyPI; this follows the same
definition as that reference implementation's `pq_compute`: a predicted and a ground-truth segment of one
category match when their IoU exceeds 0.5, where the union leaves out the prediction's pixels on unlabeled
ground truth; crowd regions and predictions lying mostly (> 50 %) on unlabeled or same-category crowd
pixels are not counted as false positives. PQ is averaged over the categories that occur.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

import models.compat  # noqa: F401  (before detectron2)

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

from pipeline.data.coco import rgb2id

OFFSET = 256 * 256 * 256
VOID = 0


class PQStat:
    def __init__(self):
        self.tp, self.fp, self.fn = defaultdict(int), defaultdict(int), defaultdict(int)
        self.iou = defaultdict(float)

    def add_image(self, gt: np.ndarray, gt_segments: list[dict], pred: np.ndarray, pred_segments: list[dict]):
        """`gt`/`pred`: id maps; segments: {id, category_id[, iscrowd]} with dataset category ids."""
        gt_info = {s["id"]: dict(s, area=0) for s in gt_segments}
        pred_info = {s["id"]: dict(s, area=0) for s in pred_segments}
        for ids, info in ((gt, gt_info), (pred, pred_info)):
            labels, counts = np.unique(ids, return_counts=True)
            for label, count in zip(labels.tolist(), counts.tolist()):
                if label in info:
                    info[label]["area"] = count
        pairs, counts = np.unique(gt.astype(np.uint64) * OFFSET + pred.astype(np.uint64), return_counts=True)
        inter = {(int(p // OFFSET), int(p % OFFSET)): int(c) for p, c in zip(pairs, counts)}
        matched_gt, matched_pred = set(), set()
        for (g, p), area in inter.items():
            if g not in gt_info or p not in pred_info or gt_info[g].get("iscrowd", 0):
                continue
            if gt_info[g]["category_id"] != pred_info[p]["category_id"]:
                continue
            union = pred_info[p]["area"] + gt_info[g]["area"] - area - inter.get((VOID, p), 0)
            iou = area / union
            if iou > 0.5:
                cat = gt_info[g]["category_id"]
                self.tp[cat] += 1
                self.iou[cat] += iou
                matched_gt.add(g)
                matched_pred.add(p)
        crowd = {}
        for g, s in gt_info.items():
            if s.get("iscrowd", 0):
                crowd[s["category_id"]] = g
            elif g not in matched_gt:
                self.fn[s["category_id"]] += 1
        for p, s in pred_info.items():
            if p in matched_pred or s["area"] == 0:
                continue
            ignored = inter.get((VOID, p), 0)
            if s["category_id"] in crowd:
                ignored += inter.get((crowd[s["category_id"]], p), 0)
            if ignored / s["area"] > 0.5:
                continue
            self.fp[s["category_id"]] += 1

    def summary(self, categories: dict[int, bool]) -> dict:
        """PQ/SQ/RQ in percent over all, thing and stuff categories; `categories`: id -> isthing."""
        out = {}
        for suffix, keep in (("", lambda t: True), ("_th", lambda t: t), ("_st", lambda t: not t)):
            pq = sq = rq = 0.0
            n = 0
            for cat, isthing in categories.items():
                tp, fp, fn = self.tp[cat], self.fp[cat], self.fn[cat]
                if not keep(isthing) or tp + fp + fn == 0:
                    continue
                n += 1
                pq += self.iou[cat] / (tp + 0.5 * fp + 0.5 * fn)
                sq += self.iou[cat] / tp if tp else 0.0
                rq += tp / (tp + 0.5 * fp + 0.5 * fn)
            out[f"PQ{suffix}"] = 100 * pq / n if n else 0.0
            out[f"SQ{suffix}"] = 100 * sq / n if n else 0.0
            out[f"RQ{suffix}"] = 100 * rq / n if n else 0.0
        return out


class PanopticQualityEvaluator(DatasetEvaluator):
    """PQ of Panoptic FPN outputs (`panoptic_seg`) against a registered COCO panoptic split's PNGs and JSON."""

    def __init__(self, dataset_name: str):
        meta = MetadataCatalog.get(dataset_name)
        self.root = Path(meta.panoptic_root)
        doc = json.loads(Path(meta.panoptic_json).read_text())
        self.gt = {a["image_id"]: a for a in doc["annotations"]}
        self.categories = {c["id"]: bool(c["isthing"]) for c in doc["categories"]}
        self.thing_ids = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
        self.stuff_ids = {v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()}
        self.stat = PQStat()

    def reset(self):
        self.stat = PQStat()

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            seg, segments = out["panoptic_seg"]
            pred = seg.cpu().numpy().astype(np.uint32)
            pred_segments = []
            for s in segments:
                ids = self.thing_ids if s["isthing"] else self.stuff_ids
                if s["category_id"] not in ids:  # the semantic head's "things" class
                    pred[pred == s["id"]] = VOID
                    continue
                pred_segments.append({"id": s["id"], "category_id": ids[s["category_id"]]})
            ann = self.gt[inp["image_id"]]
            gt = rgb2id(np.asarray(Image.open(self.root / ann["file_name"]).convert("RGB")))
            if gt.shape != pred.shape:
                raise ValueError(f"{ann['file_name']}: prediction {pred.shape} and ground truth {gt.shape} differ")
            self.stat.add_image(gt, ann["segments_info"], pred, pred_segments)

    def evaluate(self):
        return {"panoptic_seg": self.stat.summary(self.categories)}

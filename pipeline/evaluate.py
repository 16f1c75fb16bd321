"""Evaluate a fine-tuned model on its validation split; write a metrics JSON keyed like the paper registry.

COCO boxes and masks: pycocotools' COCOeval (`box_AP`, `box_AP50`, ..., `mask_AP75`); ADE20K: mean IoU over
the 150 classes (`mIoU`, `mAcc`, `pAcc`); COCO panoptic: PQ, SQ, RQ over all/thing/stuff categories
(`PQ`, `PQ_th`, `PQ_st`, ...), plus the boxes and masks of its instance branch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pipeline.compat  # noqa: F401  (before detectron2)

import torch
from torch import nn
from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator, inference_on_dataset

from models import read_checkpoint
from pipeline.finetune import FinetuneConfig, build_model, kind, register
from pipeline.io import atomic_write_json
from pipeline.logs import setup_logging
from pipeline.panoptic_quality import PanopticQualityEvaluator

# detectron2 COCOEvaluator keys -> registry metric names.
_SUFFIX = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "APS", "APm": "APM", "APl": "APL"}


def registry_metrics(results: dict) -> dict:
    out = {}
    for task, prefix in (("bbox", "box"), ("segm", "mask")):
        for key, name in _SUFFIX.items():
            if key in results.get(task, {}):
                out[f"{prefix}_{name}"] = results[task][key]
    for key in ("mIoU", "mAcc", "pACC"):
        if key in results.get("sem_seg", {}):
            out["pAcc" if key == "pACC" else key] = results["sem_seg"][key]
    out.update(results.get("panoptic_seg", {}))
    return out


def evaluators(task: str, dataset: str, work_dir: str):
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    # use_fast_impl=False: pycocotools' COCOeval (the C++ variant is not built, see README).
    coco = lambda tasks: COCOEvaluator(dataset, tasks=tasks, distributed=False, output_dir=work_dir,  # noqa: E731
                                       use_fast_impl=False)
    if kind(task) == "semantic":
        return SemSegEvaluator(dataset, distributed=False, output_dir=work_dir)
    if kind(task) == "panoptic":
        return DatasetEvaluators([PanopticQualityEvaluator(dataset), coco(("bbox", "segm"))])
    return coco(("bbox",) if task == "retinanet" else ("bbox", "segm"))


def evaluate(checkpoint: str, data: str, metrics_out: str, work_dir: str, score_thresh: float = 0.05,
             min_size: int | None = None, max_size: int | None = None, log_file: str | None = None) -> dict:
    log = setup_logging(log_file, "evaluate")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = FinetuneConfig(**state["config"])
    cfg.pretrained = None
    model = build_model(cfg)
    model.load_state_dict(read_checkpoint(checkpoint))
    if cfg.task == "retinanet":
        model.test_score_thresh = score_thresh
    elif kind(cfg.task) != "semantic":
        # Cascade R-CNN keeps one predictor per stage (a ModuleList) and scores with the last.
        predictors = model.roi_heads.box_predictor
        for predictor in predictors if isinstance(predictors, nn.ModuleList) else [predictors]:
            predictor.test_score_thresh = score_thresh
    model.eval()
    _, dataset = register(cfg.task, data)
    min_size = min_size or int(cfg.short_side.split(",")[-1])
    max_size = max_size or cfg.max_size
    mapper = DatasetMapper(is_train=False, image_format="RGB",
                           augmentations=[T.ResizeShortestEdge(min_size, max_size)])
    loader = build_detection_test_loader(dataset=get_detection_dataset_dicts([dataset], filter_empty=False),
                                         mapper=mapper, num_workers=0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        results = inference_on_dataset(model, loader, evaluators(cfg.task, dataset, work_dir))
    seconds = time.perf_counter() - t0
    metrics = registry_metrics(results)
    images = len(loader.dataset)
    metrics.update({"images": images, "eval_seconds": round(seconds, 1), "time_ms_per_image":
                    round(1000 * seconds / images, 1), "backbone": cfg.backbone, "task": cfg.task,
                    "iters": state.get("iters"), "test_size": [min_size, max_size], "score_thresh": score_thresh,
                    "evaluator": {"semantic": "detectron2 SemSegEvaluator",
                                  "panoptic": "PQ (pipeline.panoptic_quality) + pycocotools COCOeval"}.get(
                        kind(cfg.task), "pycocotools COCOeval")})
    atomic_write_json(metrics_out, metrics)
    shown = {k: round(v, 2) for k, v in metrics.items() if k in ("box_AP", "mask_AP", "mIoU", "PQ")}
    log.info("%s on %s (%d images) -> %s", shown, dataset, images, metrics_out)
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="evaluate a fine-tuned model: COCO AP, ADE20K mIoU or PQ")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="prepared dataset root (COCO or ADE20K)")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--score-thresh", type=float, default=0.05,
                        help="minimum detection score kept (detectron2's COCO default 0.05)")
    parser.add_argument("--min-size", type=int, help="test short side (default: the training one)")
    parser.add_argument("--max-size", type=int, help="test long-side cap (default: the training one)")
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    evaluate(args.checkpoint, args.data, args.metrics, args.work_dir, args.score_thresh, args.min_size,
             args.max_size, args.log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Evaluate a fine-tuned Mask R-CNN on a COCO-format split with pycocotools; write a metrics JSON.

Metric names follow the paper registry (`box_AP`, `box_AP50`, ..., `mask_AP75`), so reports can set
them beside the papers' numbers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pipeline.compat  # noqa: F401  (before detectron2)

import torch
from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator, inference_on_dataset

from models import read_checkpoint
from pipeline.data.register import register_coco
from pipeline.finetune import FinetuneConfig, build_model
from pipeline.io import atomic_write_json
from pipeline.logs import setup_logging

# detectron2 COCOEvaluator keys -> registry metric names.
_SUFFIX = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "APS", "APm": "APM", "APl": "APL"}


def registry_metrics(results: dict) -> dict:
    out = {}
    for task, prefix in (("bbox", "box"), ("segm", "mask")):
        for key, name in _SUFFIX.items():
            if key in results.get(task, {}):
                out[f"{prefix}_{name}"] = results[task][key]
    return out


def evaluate(checkpoint: str, coco: str, split: str, metrics_out: str, work_dir: str,
             score_thresh: float = 0.05, log_file: str | None = None) -> dict:
    log = setup_logging(log_file, "evaluate")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = FinetuneConfig(**state["config"])
    cfg.pretrained = None
    model = build_model(cfg)
    model.load_state_dict(read_checkpoint(checkpoint))
    model.roi_heads.box_predictor.test_score_thresh = score_thresh
    model.eval()
    register_coco(coco)
    dataset = f"coco_2017_{split}"
    mapper = DatasetMapper(is_train=False, image_format="RGB",
                           augmentations=[T.ResizeShortestEdge(cfg.min_size, cfg.max_size)])
    loader = build_detection_test_loader(dataset=get_detection_dataset_dicts([dataset], filter_empty=False),
                                         mapper=mapper, num_workers=0)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    # use_fast_impl=False: pycocotools' COCOeval (the C++ variant is not built, see README).
    evaluator = COCOEvaluator(dataset, tasks=("bbox", "segm"), distributed=False, output_dir=work_dir,
                              use_fast_impl=False)
    t0 = time.perf_counter()
    results = inference_on_dataset(model, loader, evaluator)
    metrics = registry_metrics(results)
    metrics.update({"images": len(loader.dataset), "eval_seconds": round(time.perf_counter() - t0, 1),
                    "backbone": cfg.backbone, "iters": cfg.iters, "evaluator": "pycocotools COCOeval",
                    "score_thresh": score_thresh})
    atomic_write_json(metrics_out, metrics)
    log.info("box AP %s, mask AP %s on %s -> %s", metrics.get("box_AP"), metrics.get("mask_AP"), dataset,
             metrics_out)
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="COCO box/mask AP of a fine-tuned Mask R-CNN (pycocotools)")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--coco", required=True, help="COCO-format root with annotations/ and <split>2017/")
    parser.add_argument("--split", default="val")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--score-thresh", type=float, default=0.05,
                        help="minimum detection score kept (detectron2's COCO default 0.05)")
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    evaluate(args.checkpoint, args.coco, args.split, args.metrics, args.work_dir, args.score_thresh, args.log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

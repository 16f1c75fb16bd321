"""Evaluate a fine-tuned model on its validation split; write a metrics JSON keyed like the paper registry.

COCO boxes and masks: pycocotools' COCOeval (`box_AP`, `box_AP50`, ..., `mask_AP75`); ADE20K: mean IoU over
the 150 classes (`mIoU`, `mAcc`, `pAcc`; whole-image or sliding-window inference as the recipe's mmseg config
tests, and `mIoU_ms_flip` where the recipe names test-time scales); COCO panoptic: PQ, SQ, RQ over
all/thing/stuff categories (`PQ`, `PQ_th`, `PQ_st`, ...), plus the boxes and masks of its instance branch.
The model runs on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pipeline.compat  # noqa: F401  (before detectron2)

import torch
from torch import nn
from torch.nn import functional as F
from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator, inference_on_dataset

from models import read_checkpoint
from pipeline.finetune import FinetuneConfig, build_model, device, kind, register
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


class SegmentationInference(nn.Module):
    """mmseg's semantic-segmentation test: rescale the image so that its sides fit `size` (short, long) times
    each ratio, infer on the whole image or on `crop` windows every `stride` pixels (logits averaged where windows
    overlap), optionally also on the mirrored image, and average the softmax scores at the original size."""

    def __init__(self, model: nn.Module, size: tuple[int, int], ratios=(1.0,), flip: bool = False, crop: int = 0,
                 stride: int = 0):
        super().__init__()
        self.model, self.size, self.ratios, self.flip, self.crop, self.stride = model, size, ratios, flip, crop, stride

    def _logits(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        if not self.crop or (h <= self.crop and w <= self.crop):
            return self.model([{"image": image, "height": h, "width": w}])[0]["sem_seg"]
        out, count = None, torch.zeros(1, h, w, device=image.device)
        rows = max(h - self.crop + self.stride - 1, 0) // self.stride + 1
        cols = max(w - self.crop + self.stride - 1, 0) // self.stride + 1
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * self.stride + self.crop, h), min(c * self.stride + self.crop, w)
                y1, x1 = max(y2 - self.crop, 0), max(x2 - self.crop, 0)
                window = image[:, y1:y2, x1:x2]
                logits = self.model([{"image": window, "height": y2 - y1, "width": x2 - x1}])[0]["sem_seg"]
                if out is None:
                    out = torch.zeros(logits.shape[0], h, w, device=logits.device)
                out[:, y1:y2, x1:x2] += logits
                count[:, y1:y2, x1:x2] += 1
        return out / count

    def forward(self, inputs: list[dict]) -> list[dict]:
        results = []
        for item in inputs:
            image = item["image"].to(getattr(self.model, "device", item["image"].device)).float()
            h, w = image.shape[-2:]
            height, width = item.get("height", h), item.get("width", w)
            scores = 0
            for ratio in self.ratios:
                scale = min(self.size[0] * ratio / min(h, w), self.size[1] * ratio / max(h, w))
                resized = F.interpolate(image[None], (int(h * scale + 0.5), int(w * scale + 0.5)), mode="bilinear",
                                        align_corners=False)[0]
                for flip in (False, True) if self.flip else (False,):
                    logits = self._logits(resized.flip(-1) if flip else resized)
                    logits = logits.flip(-1) if flip else logits
                    logits = F.interpolate(logits[None], (height, width), mode="bilinear", align_corners=False)[0]
                    scores = scores + logits.softmax(0)
            results.append({"sem_seg": scores / (len(self.ratios) * (2 if self.flip else 1))})
        return results


def evaluate(checkpoint: str, data: str, metrics_out: str, work_dir: str, score_thresh: float = 0.05,
             min_size: int | None = None, max_size: int | None = None, log_file: str | None = None,
             slide_crop: int = 0, slide_stride: int = 0, aug_ratios: tuple[float, ...] = (),
             flip: bool = False) -> dict:
    log = setup_logging(log_file, "evaluate")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    fields = FinetuneConfig.__dataclass_fields__
    cfg = FinetuneConfig(**{k: v for k, v in state["config"].items() if k in fields})
    cfg.pretrained = None
    model = build_model(cfg)
    model.load_state_dict(read_checkpoint(checkpoint))
    model.to(device())
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
    semantic = kind(cfg.task) == "semantic"
    if slide_crop and slide_stride <= 0:
        raise SystemExit(f"evaluate: --slide-crop {slide_crop} needs a positive --slide-stride")
    # Semantic models resize inside SegmentationInference (per test scale); the others in the loader.
    resize = [] if semantic else [T.ResizeShortestEdge(min_size, max_size)]
    mapper = DatasetMapper(is_train=False, image_format="RGB", augmentations=resize)
    loader = build_detection_test_loader(dataset=get_detection_dataset_dicts([dataset], filter_empty=False),
                                         mapper=mapper, num_workers=0)
    tested = SegmentationInference(model, (min_size, max_size), crop=slide_crop, stride=slide_stride) \
        if semantic else model
    t0 = time.perf_counter()
    with torch.inference_mode():
        results = inference_on_dataset(tested, loader, evaluators(cfg.task, dataset, work_dir))
    seconds = time.perf_counter() - t0
    metrics = registry_metrics(results)
    if semantic and aug_ratios:
        tta = SegmentationInference(model, (min_size, max_size), tuple(aug_ratios), flip, slide_crop, slide_stride)
        with torch.inference_mode():
            ms = inference_on_dataset(tta, loader, evaluators(cfg.task, dataset, work_dir))
        metrics["mIoU_ms_flip" if flip else "mIoU_ms"] = ms["sem_seg"]["mIoU"]
        metrics["test_aug"] = {"ratios": list(aug_ratios), "flip": flip}
    if semantic:
        metrics["test_mode"] = f"slide {slide_crop}/{slide_stride}" if slide_crop else "whole"
    images = len(loader.dataset)
    metrics.update({"images": images, "eval_seconds": round(seconds, 1), "time_ms_per_image":
                    round(1000 * seconds / images, 1), "backbone": cfg.backbone, "task": cfg.task,
                    "iters": state.get("iters"), "test_size": [min_size, max_size], "score_thresh": score_thresh,
                    "evaluator": {"semantic": "detectron2 SemSegEvaluator",
                                  "panoptic": "PQ (pipeline.panoptic_quality) + pycocotools COCOeval"}.get(
                        kind(cfg.task), "pycocotools COCOeval")})
    atomic_write_json(metrics_out, metrics)
    shown = {k: round(v, 2) for k, v in metrics.items() if k in ("box_AP", "mask_AP", "mIoU", "mIoU_ms_flip", "PQ")}
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
    parser.add_argument("--slide-crop", type=int, default=0,
                        help="semantic: infer on windows of this size (mmseg's slide mode); 0: the whole image")
    parser.add_argument("--slide-stride", type=int, default=0, help="semantic: the windows' stride")
    parser.add_argument("--aug-ratios", type=lambda v: tuple(float(r) for r in v.split(",")), default=(),
                        help="semantic: also test at these multiples of the test size (comma-separated)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                        help="semantic: add the mirrored image to the multi-scale test")
    parser.add_argument("--log-file", help="also write the log to this file")
    args = parser.parse_args(argv)
    evaluate(args.checkpoint, args.data, args.metrics, args.work_dir, args.score_thresh, args.min_size,
             args.max_size, args.log_file, args.slide_crop, args.slide_stride, args.aug_ratios, args.flip)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

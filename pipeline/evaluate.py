"""Evaluate a fine-tuned model on its validation split; write a metrics JSON keyed like the paper registry.

COCO boxes and masks: pycocotools' COCOeval (`box_AP`, `box_AP50`, ..., `mask_AP75`); ADE20K: mean IoU over
the 150 classes (`mIoU`, `mAcc`, `pAcc`; whole-image or sliding-window inference as the recipe's mmseg config
tests, and `mIoU_ms_flip` where the recipe names test-time scales); COCO panoptic: PQ, SQ, RQ over
all/thing/stuff categories (`PQ`, `PQ_th`, `PQ_st`, ...), plus the boxes and masks of its instance branch.
The model runs on the GPU when there is one.
"""

from __future__ import annotations

import time
from pathlib import Path

import models.compat  # noqa: F401  (before detectron2)

import torch
from torch import nn
from torch.nn import functional as F
from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator, inference_on_dataset

from models import CheckpointError, load_file
from pipeline import engine, registry
from pipeline.detection import build_model, device, register
from pipeline.io import DiskFull, atomic_write_json
from pipeline.logs import setup_logging
from pipeline.panoptic_quality import PanopticQualityEvaluator
from pipeline.settings import EvaluateSettings, FinetuneSettings
from pipeline.tasks import task

# detectron2 COCOEvaluator keys -> registry metric names.
_SUFFIX = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "APS", "APm": "APM", "APl": "APL"}


def registry_metrics(results: dict) -> dict:
    out = {}
    for kind, prefix in (("bbox", "box"), ("segm", "mask")):
        for key, name in _SUFFIX.items():
            if key in results.get(kind, {}):
                out[f"{prefix}_{name}"] = results[kind][key]
    for key in ("mIoU", "mAcc", "pACC"):
        if key in results.get("sem_seg", {}):
            out["pAcc" if key == "pACC" else key] = results["sem_seg"][key]
    out.update(results.get("panoptic_seg", {}))
    return out


def evaluators(framework: str, dataset: str, work_dir: str):
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    t = task(framework)
    # use_fast_impl=False: pycocotools' COCOeval (the C++ variant is not built, see README).
    coco = lambda tasks: COCOEvaluator(dataset, tasks=tasks, distributed=False, output_dir=work_dir,  # noqa: E731
                                       use_fast_impl=False)
    if t.kind == "semantic":
        return SemSegEvaluator(dataset, distributed=False, output_dir=work_dir)
    if t.kind == "panoptic":
        return DatasetEvaluators([PanopticQualityEvaluator(dataset), coco(("bbox", "segm"))])
    return coco(("bbox", "segm") if t.masks else ("bbox",))


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


def load_model(checkpoint: str, score_thresh: float) -> tuple[nn.Module, FinetuneSettings, dict]:
    """The fine-tuned model as its checkpoint's settings built it, in eval mode, keeping detections from
    `score_thresh` up."""
    state = load_file(checkpoint)
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{checkpoint}: not a fine-tuned model of this pipeline (no `config`); evaluate the "
                              "model_final.pth a finetune job writes")
    fields = FinetuneSettings.__dataclass_fields__
    cfg = FinetuneSettings(**{k: v for k, v in state["config"].items() if k in fields})
    model = build_model(cfg, None, state.get("pretrain_img_size", 224))
    model.load_state_dict(state["model"])
    model.to(device())
    if cfg.framework == "retinanet":
        model.test_score_thresh = score_thresh
    elif task(cfg.framework).kind != "semantic":
        # Cascade R-CNN keeps one predictor per stage (a ModuleList) and scores with the last.
        predictors = model.roi_heads.box_predictor
        for predictor in predictors if isinstance(predictors, nn.ModuleList) else [predictors]:
            predictor.test_score_thresh = score_thresh
    return model.eval(), cfg, state


def _infer(model, semantic: bool, size: tuple[int, int], loader, framework: str, dataset: str, work_dir: str,
           ratios=(1.0,), flip: bool = False, slide=None) -> dict:
    crop, stride = slide or (0, 0)
    tested = SegmentationInference(model, size, tuple(ratios), flip, crop, stride) if semantic else model
    with torch.inference_mode():
        return inference_on_dataset(tested, loader, evaluators(framework, dataset, work_dir))


def evaluate(cfg: EvaluateSettings, checkpoint: str, data: str, metrics_out: str, work_dir: str,
             log_file: str | None = None) -> dict:
    log = setup_logging(log_file, "evaluate")
    model, trained, state = load_model(checkpoint, cfg.score_thresh)
    t = task(trained.framework)
    _, dataset = register(t.name, data)
    min_size, max_size = cfg.test_size
    semantic = t.kind == "semantic"
    if cfg.test_slide and cfg.test_slide[1] <= 0:
        raise engine.TrainingError(f"test_slide {cfg.test_slide}: the windows need a positive stride")
    # Semantic models resize inside SegmentationInference (per test scale); the others in the loader.
    resize = [] if semantic else [T.ResizeShortestEdge(min_size, max_size)]
    loader = build_detection_test_loader(dataset=get_detection_dataset_dicts([dataset], filter_empty=False),
                                         mapper=DatasetMapper(is_train=False, image_format="RGB", augmentations=resize),
                                         num_workers=0)
    t0 = time.perf_counter()
    metrics = registry_metrics(_infer(model, semantic, (min_size, max_size), loader, t.name, dataset, work_dir,
                                      slide=cfg.test_slide))
    seconds = time.perf_counter() - t0
    if semantic and cfg.test_ratios:
        ms = _infer(model, semantic, (min_size, max_size), loader, t.name, dataset, work_dir, cfg.test_ratios,
                    cfg.test_flip, cfg.test_slide)
        metrics["mIoU_ms_flip" if cfg.test_flip else "mIoU_ms"] = ms["sem_seg"]["mIoU"]
        metrics["test_aug"] = {"ratios": list(cfg.test_ratios), "flip": cfg.test_flip}
    if semantic:
        metrics["test_mode"] = "slide {}/{}".format(*cfg.test_slide) if cfg.test_slide else "whole"
    images = len(loader.dataset)
    metrics.update({"images": images, "eval_seconds": round(seconds, 1), "time_ms_per_image":
                    round(1000 * seconds / images, 1), "backbone": trained.backbone, "task": t.name,
                    "iters": state.get("iters"), "test_size": [min_size, max_size], "score_thresh": cfg.score_thresh,
                    "evaluator": t.evaluator, "params": sum(p.numel() for p in model.parameters())})
    atomic_write_json(metrics_out, metrics)
    engine.record_run(Path(metrics_out).parent, 1, seconds)
    shown = {k: round(v, 2) for k, v in metrics.items() if k in ("box_AP", "mask_AP", "mIoU", "mIoU_ms_flip", "PQ")}
    log.info("%s on %s (%d images) -> %s", shown, dataset, images, metrics_out)
    return metrics


def main(argv=None) -> int:
    p = engine.parser("evaluate a fine-tuned model: COCO AP, ADE20K mIoU or PQ", ("checkpoint", "metrics"))
    args = p.parse_args(argv)
    log = setup_logging(args.log_file, "evaluate")
    try:
        cfg, data = engine.load(args, "evaluate", log)
        evaluate(cfg, str(args.checkpoint), str(data), str(args.metrics), str(args.work_dir), args.log_file)
    except (engine.TrainingError, registry.ConfigError, CheckpointError, DiskFull) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

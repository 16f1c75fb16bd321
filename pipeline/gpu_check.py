"""`make gpu-check`: the pipeline's GPU paths, run once on one CUDA GPU and measured, in one prepared command.

    python -m pipeline.gpu_check [--compile] [--out reports/bench]    # one CUDA GPU, a few minutes
    python -m pipeline.gpu_check --device cpu --tiny                  # every path at tiny sizes (make test)

It drives the engines themselves, not copies of them:

1. pretraining (pipeline/pretrain.py `build_trainer` and `train_step`: AMP, the scaler, Mixup, EMA, the
   schedule) of one model per family with its recipe's settings at the recipe's per-GPU batch, on synthetic
   ImageNet-shaped batches held on the device (the data loader is not what is measured), channels-last, AMP
   bf16 where the GPU has it, else fp16 with the loss scaler; the same model done the reference implementations'
   way (pipeline/bench.py FAMILY_BASELINES: explicit softmax attention, elementwise LayerNorm, channels-first)
   in the same run, and with `--compile` the model through `torch.compile`;
2. fine-tuning (pipeline/finetune.py `finetune`, detectron2) of the papers' detectors at their recipes'
   resize (800 x up to 1333) and per-GPU batch on a synthetic COCO-format dataset: seconds per iteration (the
   median of detectron2's iteration timer) and peak memory;
3. DDP: the pretraining command under torchrun, and fine-tuning through detectron2's launch worker, each with
   a process group (NCCL on a GPU, gloo on CPU) of one process.

It writes `<out>/gpu.md` and `gpu.json` (`gpu_tiny.*` with `--tiny`): the machine (GPU, driver, CUDA, torch),
every figure and every failure; it exits 1 when any path failed, after running the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# One ImageNet model per family, with the pretraining recipe (config/recipes/pretrain.yaml) it trains with;
# ResNet-50 is BoTNet's baseline.
PRETRAIN = (("pvt_small", "pvt"), ("hornet_tiny_gf", "hornet"), ("lvt_cls", "lvt"),
            ("patchconvnet_s60", "patchconvnet"), ("botnet50", "botnet"), ("resnet50_baseline", "botnet"))
# Detectors with their fine-tuning recipe and schedule (config/recipes/finetune.yaml): HorNet's is its papers'
# Cascade Mask R-CNN (the Mask R-CNN heads plus the cascade's box stages).
DETECTION = (("pvt_small", "pvt_mask_rcnn", "1x"), ("hornet_tiny_gf", "hornet_cascade_mask_rcnn", "3x_ms"),
             ("pvt_small", "pvt_retinanet", "1x"))
# The ResNets (whose bench baseline is timm's): the reference way is channels-first memory.
CHANNELS_FIRST = ("channels-first", {}, False)


@dataclass(frozen=True)
class Sizes:
    steps: int  # pretraining steps of the project's way (and compiled)
    reference_steps: int  # of the reference way
    untimed: int  # first steps left out of the timing (allocation, cuDNN autotuning, compilation)
    pool: int  # distinct synthetic batches, cycled
    img_size: int | None  # None: the recipe's
    batch: int | None  # None: the recipe's per-GPU batch
    det_iters: int
    det_short_side: list[int] | None  # None: the recipe's resize
    det_max_size: int | None
    det_batch: int | None
    det_proposals: tuple[int, int] | None  # (RoIs per image, RPN proposals kept); None: detectron2's defaults
    coco_images: int
    coco_size: tuple[int, int]  # synthetic COCO images, height x width
    ddp_steps: int


FULL = Sizes(steps=200, reference_steps=60, untimed=20, pool=4, img_size=None, batch=None, det_iters=40,
             det_short_side=None, det_max_size=None, det_batch=None, det_proposals=None, coco_images=16,
             coco_size=(800, 1200), ddp_steps=10)
TINY = Sizes(steps=4, reference_steps=3, untimed=1, pool=2, img_size=64, batch=4, det_iters=3, det_short_side=[128],
             det_max_size=192, det_batch=2, det_proposals=(64, 100), coco_images=4, coco_size=(96, 128), ddp_steps=2)


class Report:
    """Every figure and failure of the run, as it goes."""

    def __init__(self, mode: str, device: str):
        self.doc = {"mode": mode, "device": device, "environment": {}, "pretrain": [], "detection": [], "ddp": [],
                    "failures": []}

    def attempt(self, what: str, fn, *args, **kwargs):
        """Run one measurement; a failure is recorded (one line here, the traceback on stderr) and the run goes on."""
        print(f"gpu-check: {what}", file=sys.stderr, flush=True)
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # every path is tried; the report names each that failed
            traceback.print_exc()
            line = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            self.doc["failures"].append({"what": what, "error": line})
            print(f"gpu-check: FAILED {what}: {line}", file=sys.stderr, flush=True)
            return None


def environment(device) -> dict:
    import torch
    import torchvision

    import detectron2

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "detectron2": detectron2.__version__, "cuda": torch.version.cuda, "hostname": socket.gethostname(),
           "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                   nccl=".".join(map(str, torch.cuda.nccl.version())), bf16=torch.cuda.is_bf16_supported(),
                   driver=_driver())
    else:
        env.update(gpu=None, cpu=platform.processor() or platform.machine())
    return env


def _driver() -> str | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    proc = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                          text=True, timeout=30)
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else None


def amp_mode(device) -> str:
    """bf16 where the GPU computes in it (and on CPU), else fp16 with the loss scaler."""
    import torch

    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _fields(cls, values: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def pretrain_settings(backbone: str, recipe: str, sizes: Sizes, steps: int, **switches):
    """The recipe's settings for `backbone` (as a job at full scale resolves them), at the recipe's per-GPU batch
    (or `sizes`), for `steps` steps with a tenth of them warming up."""
    from pipeline import settings
    from pipeline.settings import PretrainSettings

    values = settings.resolve("pretrain", backbone, recipe, 0, "full", "", {})["values"]
    batch = sizes.batch or values["batch_size"] // values.get("gpus", 1)
    values.update(batch_size=batch, epochs=0, cooldown_epochs=0, warmup_epochs=0, steps=steps,
                  warmup_steps=max(1, steps // 10), img_size=sizes.img_size or values["img_size"], **switches)
    return PretrainSettings(backbone=backbone, **_fields(PretrainSettings, values))


def measure_pretrain(backbone: str, recipe: str, sizes: Sizes, device, way: str, steps: int, amp: str,
                     channels_last: bool, overrides: dict, compile: bool = False) -> dict:
    """Images/s (after the untimed steps), peak memory and the loss over `steps` engine steps."""
    import torch

    from pipeline import pretrain

    cfg = pretrain_settings(backbone, recipe, sizes, steps, amp=amp, channels_last=channels_last, compile=compile)
    torch.manual_seed(0)
    data = pretrain.Data(train=None, val=None, per_epoch=steps, total=steps, warmup=cfg.warmup_steps)
    _reset_peak(device)
    trainer = pretrain.build_trainer(cfg, data, device, 1, **overrides)
    trainer.model.train()
    size = cfg.img_size
    pool = [(torch.randn(cfg.batch_size, 3, size, size, device=device),
             torch.randint(0, 1000, (cfg.batch_size,), device=device)) for _ in range(sizes.pool)]
    losses, start = [], None
    for i in range(steps):
        if i == sizes.untimed:
            _sync(device)
            start = time.perf_counter()
        images, targets = pool[i % len(pool)]
        losses.append(pretrain.train_step(trainer, cfg, images, targets, 1))
    _sync(device)
    seconds = time.perf_counter() - start
    k = max(1, min(10, steps // 4))
    return {"model": backbone, "recipe": recipe, "way": way, "batch": cfg.batch_size, "img_size": size, "amp": amp,
            "channels_last": channels_last, "compile": compile, "overrides": overrides, "steps": steps,
            "timed_steps": steps - sizes.untimed,
            "images_per_s": round(cfg.batch_size * (steps - sizes.untimed) / seconds, 2),
            "peak_memory_gib": _peak_gib(device), "loss_first": round(statistics.mean(losses[:k]), 4),
            "loss_last": round(statistics.mean(losses[-k:]), 4)}


def check_pretraining(report: Report, sizes: Sizes, device, compile: bool) -> None:
    import models
    from pipeline.bench import FAMILY_BASELINES, TIMM_SAME

    amp = amp_mode(device)
    for backbone, recipe in PRETRAIN:
        label, overrides, cl = CHANNELS_FIRST if backbone in TIMM_SAME else \
            FAMILY_BASELINES.get(models.family(backbone), CHANNELS_FIRST)
        runs = [("project", sizes.steps, True, {}, False), (f"reference: {label}", sizes.reference_steps,
                                                            True if cl is None else cl, overrides, False)]
        if compile:
            runs.append(("project, torch.compile", sizes.steps, True, {}, True))
        for way, steps, channels_last, over, comp in runs:
            row = report.attempt(f"pretrain {backbone} ({way})", measure_pretrain, backbone, recipe, sizes, device,
                                 way, steps, amp, channels_last, over, comp)
            if row is not None:
                report.doc["pretrain"].append(row)


def write_coco(root: Path, images: int, size: tuple[int, int]) -> Path:
    """A COCO-format dataset in the prepared layout (pipeline/data/register.py), with COCO's 80 categories: noise
    images, each with two boxes with polygon masks."""
    import numpy as np
    from PIL import Image

    import models.compat  # noqa: F401  (before detectron2)
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    categories = [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]
    rng = np.random.default_rng(0)
    h, w = size
    for split in ("train2017", "val2017"):
        (root / split).mkdir(parents=True, exist_ok=True)
        doc = {"images": [], "annotations": [], "categories": categories}
        for i in range(1, images + 1):
            name = f"{i:012d}.jpg"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / name, quality=90)
            doc["images"].append({"id": i, "file_name": name, "height": h, "width": w})
            for j in range(2):
                bw, bh = int(w * rng.uniform(0.2, 0.5)), int(h * rng.uniform(0.2, 0.5))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                doc["annotations"].append({
                    "id": len(doc["annotations"]) + 1, "image_id": i,
                    "category_id": categories[(2 * i + j) % len(categories)]["id"],
                    "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
                    "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def finetune_settings(backbone: str, recipe: str, schedule: str, sizes: Sizes, iters: int, workers: int):
    from pipeline import settings
    from pipeline.settings import FinetuneSettings

    values = settings.resolve("finetune", backbone, recipe, 0, "full", "", {}, schedule)["values"]
    values.update(iters=iters, epochs=0, steps=[], workers=workers, checkpoint_every=10**6,
                  batch_size=sizes.det_batch or values["batch_size"] // values.get("gpus", 1))
    if sizes.det_proposals:
        values.update(roi_batch_size_per_image=sizes.det_proposals[0], rpn_post_nms_topk_train=sizes.det_proposals[1])
    if sizes.det_short_side:
        values.update(short_side=sizes.det_short_side, max_size=sizes.det_max_size)
        if values.get("crop_branch"):
            values["crop_branch"] = {"short_side": sizes.det_short_side, "crop": [sizes.det_short_side[0] // 2] * 2}
    return FinetuneSettings(backbone=backbone, **_fields(FinetuneSettings, values))


def measure_detection(backbone: str, recipe: str, schedule: str, sizes: Sizes, coco: Path, work: Path, device,
                      workers: int) -> dict:
    from pipeline import finetune

    cfg = finetune_settings(backbone, recipe, schedule, sizes, sizes.det_iters, workers)
    files = finetune.RunFiles(None, str(coco), str(work / "state"), str(work / "model_final.pth"), 1,
                              str(work / "log"))
    _reset_peak(device)
    finetune.finetune(cfg, files)
    lines = [json.loads(line) for line in (work / "state" / "metrics.json").read_text().splitlines()]
    last = [line for line in lines if "time" in line][-1]
    return {"model": backbone, "framework": cfg.framework, "recipe": recipe, "schedule": schedule,
            "batch_per_gpu": cfg.batch_size, "short_side": cfg.short_side, "max_size": cfg.max_size,
            "iters": cfg.iters, "seconds_per_iter": round(last["time"], 4), "data_seconds": round(last["data_time"], 4),
            "total_loss": round(last["total_loss"], 4), "peak_memory_gib": _peak_gib(device)}


def check_detection(report: Report, sizes: Sizes, device, work: Path) -> Path | None:
    coco = report.attempt("synthetic COCO", write_coco, work / "coco", sizes.coco_images, sizes.coco_size)
    if coco is None:
        return None
    workers = min(8, (os.cpu_count() or 2) // 2) if device.type == "cuda" else 0
    for backbone, recipe, schedule in DETECTION:
        row = report.attempt(f"fine-tune {recipe} {backbone}", measure_detection, backbone, recipe, schedule,
                             sizes, coco, work / f"det-{recipe}-{backbone}", device, workers)
        if row is not None:
            report.doc["detection"].append(row)
    return coco


def write_imagenet(root: Path, images: int, size: int) -> Path:
    """An ImageNet folder in the prepared layout (classes.tsv, train/ and val/ by wnid) of noise images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    wnids = ["n00000001", "n00000002"]
    root.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{i}\t{w}\tc{i}\n" for i, w in enumerate(wnids))
    (root / "classes.tsv").write_text("index\twnid\tnames\n" + rows)
    for split in ("train", "val"):
        for i in range(images):
            folder = root / split / wnids[i % 2]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    return root


def ddp_torchrun(sizes: Sizes, device, work: Path) -> dict:
    """The pretraining command under torchrun: a process group of one process, DDP, checkpoints, metrics."""
    from pipeline import settings

    workers = min(8, (os.cpu_count() or 2) // 2) if device.type == "cuda" else 0
    cfg = pretrain_settings("pvt_small", "pvt", sizes, sizes.ddp_steps, amp=amp_mode(device), channels_last=True,
                            workers=workers)
    data = write_imagenet(work / "imagenet", 2 * cfg.batch_size, cfg.img_size)
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("backbone", "seed")}
    settings.for_engine(work / "settings.yaml", "pretrain", cfg.backbone, **values)
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "1", "-m",
           "pipeline.pretrain", "--settings", str(work / "settings.yaml"), "--data", str(data), "--work-dir",
           str(work / "state"), "--output", str(work / "model.pth"), "--metrics", str(work / "metrics.json"),
           "--log-file", str(work / "log")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return _ddp_result("torchrun + pipeline.pretrain", proc.returncode, proc.stderr, work, t0,
                       work / "model.pth")


def _launched(cfg, files, result: str) -> None:
    """In the process detectron2's launch worker started: the fine-tuning engine's `run`, and what it ran on."""
    import torch.distributed as dist

    from pipeline import finetune

    backend = dist.get_backend()
    code = finetune.run(cfg, files)
    Path(result).write_text(json.dumps({"backend": backend, "code": code}))


def ddp_detectron2(sizes: Sizes, device, coco: Path, work: Path) -> dict:
    """Fine-tuning through detectron2's launch worker (models/compat.py: process group, local group, device) with
    one process, as `launch` starts each of its processes."""
    import datetime as dt

    import torch.multiprocessing as mp

    from models.compat import distributed_launch
    from pipeline import finetune

    launch_module = sys.modules[distributed_launch().__module__]
    cfg = finetune_settings("pvt_small", "pvt_mask_rcnn", "1x", sizes, sizes.ddp_steps, 0)
    files = finetune.RunFiles(None, str(coco), str(work / "state"), str(work / "model_final.pth"), 1,
                              str(work / "log"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    mp.start_processes(launch_module._distributed_worker, nprocs=1, daemon=False, args=(
        _launched, 1, 1, 0, f"tcp://127.0.0.1:{port}", (cfg, files, str(work / "result.json")),
        dt.timedelta(minutes=5)))
    result = json.loads((work / "result.json").read_text())
    return _ddp_result("detectron2 launch + pipeline.finetune", result["code"], "", work, t0,
                       work / "model_final.pth", result["backend"])


def _ddp_result(path: str, code: int, stderr: str, work: Path, t0: float, output: Path,
                backend: str | None = None) -> dict:
    log = (work / "log").read_text() if (work / "log").exists() else ""
    found = [line.split("process group: ", 1)[1].split(",")[0] for line in log.splitlines()
             if "process group: " in line]
    backend = backend or (found[0] if found else None)
    if code != 0 or not output.exists() or not found:
        tail = (stderr.strip().splitlines() or log.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{path}: exit {code}, output {'present' if output.exists() else 'missing'}, "
                           f"process group {'logged' if found else 'not logged'}: {tail}")
    return {"path": path, "backend": backend, "processes": 1, "seconds": round(time.perf_counter() - t0, 1),
            "output": output.name}


def check_ddp(report: Report, sizes: Sizes, device, coco: Path | None, work: Path) -> None:
    row = report.attempt("DDP: torchrun", ddp_torchrun, sizes, device, work / "ddp-torchrun")
    if row is not None:
        report.doc["ddp"].append(row)
    if coco is None:
        return
    row = report.attempt("DDP: detectron2 launch", ddp_detectron2, sizes, device, coco, work / "ddp-detectron2")
    if row is not None:
        report.doc["ddp"].append(row)


def _num(v, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def render(doc: dict) -> str:
    env, failures = doc["environment"], doc["failures"]
    outcome = f"{len(failures)} path(s) failed" if failures else "every path passed"
    lines = [f"# GPU check ({doc['mode']}, {doc['device']})", "",
             f"`python -m pipeline.gpu_check {' '.join(doc['argv'])}` in {doc['seconds']:.0f} s: {outcome}.",
             "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += ["", "## Pretraining steps (pipeline/pretrain.py)", "",
              "Synthetic ImageNet-shaped batches on the device, the recipe's settings (Mixup/CutMix, EMA, "
              "clipping, label smoothing) at its per-GPU batch; images/s over the steps after the first "
              f"{doc['sizes']['untimed']}; loss: mean of the first and last steps. `vs project` compares each way "
              "with the project's way of the same model in this run.", "",
              "| model | way | batch | size | AMP | CL | img/s | vs project | peak GiB | loss first -> last |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    project = {r["model"]: r["images_per_s"] for r in doc["pretrain"] if r["way"] == "project"}
    for r in doc["pretrain"]:
        ratio = f"{r['images_per_s'] / project[r['model']]:.2f}x" if r["model"] in project else "n/a"
        lines.append(f"| {r['model']} | {r['way']} | {r['batch']} | {r['img_size']} | {r['amp']} | "
                     f"{'yes' if r['channels_last'] else 'no'} | {r['images_per_s']:.1f} | {ratio} | "
                     f"{_num(r['peak_memory_gib'])} | {r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    lines += ["", "## Detector fine-tuning iterations (pipeline/finetune.py, detectron2)", "",
              "A synthetic COCO-format dataset, the recipe's resize and per-GPU batch, fp32, from random weights; "
              "seconds per iteration as detectron2's iteration timer gives them (median of the last 20).", "",
              "| model | framework | recipe | batch/GPU | short side (max) | iters | s/iter | data s/iter | "
              "peak GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["detection"]:
        lines.append(f"| {r['model']} | {r['framework']} | {r['recipe']} {r['schedule']} | {r['batch_per_gpu']} | "
                     f"{r['short_side']} ({r['max_size']}) | {r['iters']} | {r['seconds_per_iter']:.3f} | "
                     f"{r['data_seconds']:.3f} | {_num(r['peak_memory_gib'])} |")
    lines += ["", "## DDP", "", "| path | backend | processes | seconds | output |", "|---|---|---|---|---|"]
    lines += [f"| {r['path']} | {r['backend']} | {r['processes']} | {r['seconds']} | {r['output']} |"
              for r in doc["ddp"]]
    lines += ["", "## Failures", ""]
    lines += [f"- {f['what']}: {f['error']}" for f in doc["failures"]] or ["none"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: every path in a minute, on CPU too")
    p.add_argument("--compile", action="store_true", help="also measure each pretraining step under torch.compile")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench", help="folder for gpu.md and gpu.json")
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the engines take a visible GPU; on CPU there must be none
    import torch

    from pipeline.io import atomic_write_json, atomic_write_text

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device visible; run on a GPU machine, or `--device cpu --tiny` to check the paths",
              file=sys.stderr)
        return 2
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    sizes = TINY if args.tiny else FULL
    report = Report("tiny" if args.tiny else "full", args.device)
    report.doc["argv"] = list(argv if argv is not None else sys.argv[1:])
    report.doc["sizes"] = dataclasses.asdict(sizes)
    t0 = time.perf_counter()
    report.doc["environment"] = report.attempt("environment", environment, device) or {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        check_pretraining(report, sizes, device, args.compile)
        coco = check_detection(report, sizes, device, work)
        check_ddp(report, sizes, device, coco, work)
    report.doc["seconds"] = round(time.perf_counter() - t0, 1)
    stem = "gpu_tiny" if args.tiny else "gpu"
    atomic_write_json(args.out / f"{stem}.json", report.doc)
    md = render(report.doc)
    atomic_write_text(args.out / f"{stem}.md", md)
    print(md)
    failed = report.doc["failures"]
    if failed:
        print(f"error: {len(failed)} path(s) failed: {', '.join(f['what'] for f in failed)}; see "
              f"{args.out / (stem + '.md')}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

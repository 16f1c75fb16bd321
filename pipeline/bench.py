"""`python -m pipeline bench models`: parameters, MACs and CPU throughput of registered models.

Protocol (the same as the reference anchors in config/bench/anchors.yaml): random input at the model's
resolution, fp32, batch 8; inference under `inference_mode`, training as SGD steps on cross-entropy;
2 warm-up iterations, then 3 repeats of 5 timed iterations; the median repeat's images/s is reported with
the min-max range. Each model runs in a fresh process. Where timm ships the same architecture, timm's model
is measured in the same run and the ratio reported. Otherwise the same-run baseline is the same model with
the reference implementations' way of doing its costliest op: explicit softmax attention (`fused_attn=False`)
for PVT, BoTNet and LVT, the elementwise channels-first LayerNorm (`fused_norm=False`) for HorNet, and the
channels-first memory format for PatchConvNet.
The official implementations' figures (config/bench/anchors.yaml) come from another run: they are compared
after scaling by a yardstick, timm's ResNet-50 (the anchors' torchvision ResNet-50), measured in this run.

`--dense`: the backbone as detection and segmentation run it (`features_only`, every stage's output) at
DENSE_SIZE, batch 1; forward, and forward+backward with an SGD step on the sum of the features' means. Same
baselines; ResNet-50's is timm's `features_only` network.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ROOT / "config" / "bench" / "anchors.yaml"
# Same architecture in timm: a same-run baseline.
TIMM_SAME = {"resnet50_baseline": "resnet50", "resnet101_baseline": "resnet101",
             "resnet152_baseline": "resnet152", "resnet200_baseline": "resnet200"}
YARDSTICK = "resnet50"  # timm; the anchors' yardstick is torchvision's ResNet-50, the same architecture
YARDSTICK_ANCHOR = "resnet50_baseline"
# A COCO image at detectron2's test resize (short side 800, long side at most 1333), padded to a multiple of 32 as
# the FPN detectors' `size_divisibility` does (a 4:3 image is 800x1067 -> 800x1088; 2:3 -> 800x1216).
DENSE_SIZE = (800, 1216)
# Conv-heavy families run channels-last by default (`--channels-last auto`).
CHANNELS_LAST_FAMILIES = {"botnet", "hornet", "lvt", "patchconvnet"}
# Same-run baseline per family: (label, model overrides, channels-last for the baseline or None = as the row).
FAMILY_BASELINES = {
    "pvt": ("explicit attention", {"fused_attn": False}, None),
    "botnet": ("explicit attention", {"fused_attn": False}, None),
    "lvt": ("explicit attention", {"fused_attn": False}, None),
    # HorNet's code as it runs: elementwise LayerNorm, channels-first.
    "hornet": ("elementwise LayerNorm, channels-first", {"fused_norm": False}, False),
    "patchconvnet": ("channels-first", {}, False),
}


def _measure(fn, batch: int, warmup: int, repeats: int, iters: int) -> dict:
    for _ in range(warmup):
        fn()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        rates.append(batch * iters / (time.perf_counter() - t0))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def _create(name: str, source: str, overrides: dict, dense: bool):
    """(model, input size, MACs) of a row: the classifier at its resolution, or with `dense` the backbone's
    feature pyramid at DENSE_SIZE."""
    import torch

    from models.flops import count_macs

    if source == "timm":
        import timm

        kw = {"features_only": True, "out_indices": (1, 2, 3, 4)} if dense else {}
        model = timm.create_model(name, **kw)
        size = DENSE_SIZE if dense else tuple(model.pretrained_cfg.get("input_size", (3, 224, 224))[1:])
        return model, size, None
    import models

    model = models.create(name, features_only=dense, **overrides)
    size = DENSE_SIZE if dense else tuple(getattr(model, "img_size", (224, 224)))
    return model, size, count_macs(model, torch.randn(1, 3, *size))


def _loss(out, y):
    import torch

    if isinstance(out, (list, tuple)):  # a feature pyramid: every level takes part in the backward pass
        return sum(o.float().mean() for o in out)
    return torch.nn.functional.cross_entropy(out, y)


def measure_one(name: str, source: str, batch: int, warmup: int, repeats: int, iters: int, channels_last: bool,
                threads: int | None, overrides: dict | None = None, label: str | None = None,
                dense: bool = False) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, size, macs = _create(name, source, overrides or {}, dense)
    params = sum(p.numel() for p in model.parameters())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, *size).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,))

    model.eval()

    def infer():
        with torch.inference_mode():
            model(x)

    infer_rate = _measure(infer, batch, warmup, repeats, iters)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train_step():
        opt.zero_grad(set_to_none=True)
        _loss(model(x), y).backward()
        opt.step()

    train_rate = _measure(train_step, batch, warmup, repeats, iters)
    return {"model": name + (f" ({label})" if label else ""), "source": source, "dense": dense,
            "img_size": list(size), "params": params, "macs": macs,
            "channels_last": channels_last, "batch": batch, "threads": torch.get_num_threads(),
            "warmup": warmup, "repeats": repeats, "iters": iters,
            "infer": infer_rate, "train": train_rate}


def _run_isolated(name: str, source: str, args, baseline: tuple | None = None,
                  channels_last: bool | None = None) -> dict:
    cmd = [sys.executable, "-m", "pipeline.bench", "_one", name, "--source", source, "--batch", str(args.batch),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--iters", str(args.iters)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.dense:
        cmd.append("--dense")
    if channels_last if channels_last is not None else _channels_last(name, source, args.channels_last):
        cmd.append("--channels-last")
    if baseline is not None:
        cmd += ["--label", baseline[0], "--overrides", json.dumps(baseline[1])]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark of {name} failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _channels_last(name: str, source: str, mode: str) -> bool:
    if mode != "auto":
        return mode == "on"
    if source == "timm":
        return True
    import models

    return models.family(name) in CHANNELS_LAST_FAMILIES


def _rate(r: dict) -> str:
    return f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"


def _same_model_baseline(name: str) -> tuple | None:
    import models

    return FAMILY_BASELINES.get(models.family(name))


def render_markdown(rows: list[dict], anchors: dict, yardstick: dict) -> str:
    lines = [
        "# Model benchmark (CPU)",
        "",
        f"fp32, batch {rows[0]['batch']}, {rows[0]['threads']} threads; images/s as median (min-max) of "
        f"{rows[0]['repeats']} repeats of {rows[0]['iters']} iterations after {rows[0]['warmup']} warm-up "
        "iterations; each model in a fresh process. MACs counted by fvcore "
        "(what the papers call GFLOPs). `vs same-run baseline`: timm's same architecture, or the same model with "
        "explicit (unfused) attention. `vs official`: the official implementation's figure from another run "
        f"(config/bench/anchors.yaml), scaled by the ResNet-50 yardstick measured in this run (infer "
        f"{_rate(yardstick['infer'])}, train {_rate(yardstick['train'])} img/s); expect 10-25 % noise.",
        "",
        "| model | size | params | GMACs | CL | infer img/s | train img/s | vs same-run baseline (infer / train) | "
        "vs official (infer / train) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["source"] == "timm":
            continue
        vs_timm = _vs_baseline(r)
        a = anchors.get(r["model"])
        if a:
            y = anchors[YARDSTICK_ANCHOR]
            speed_infer = y["infer"] / yardstick["infer"]["median"]
            speed_train = y["train"] / yardstick["train"]["median"]
            ref_infer = a["infer_cl"] if r["channels_last"] else a["infer"]
            vs_anchor = (f"{r['infer']['median'] * speed_infer / ref_infer:.2f}x / "
                         f"{r['train']['median'] * speed_train / a['train']:.2f}x ({a['impl']})")
        else:
            vs_anchor = "n/a"
        size = "x".join(map(str, r["img_size"]))
        lines.append(f"| {r['model']} | {size} | {r['params'] / 1e6:.3f}M | {r['macs'] / 1e9:.3f} | "
                     f"{'yes' if r['channels_last'] else 'no'} | {_rate(r['infer'])} | {_rate(r['train'])} | "
                     f"{vs_timm} | {vs_anchor} |")
    return "\n".join(lines) + "\n"


def _vs_baseline(r: dict) -> str:
    base = r.get("baseline")
    if not base:
        return "n/a"
    return (f"{r['infer']['median'] / base['infer']['median']:.2f}x / "
            f"{r['train']['median'] / base['train']['median']:.2f}x ({base['model']})")


def render_dense(rows: list[dict]) -> str:
    r0 = rows[0]
    lines = [
        "# Backbone benchmark at detection resolution (CPU)",
        "",
        f"Each backbone's feature pyramid (`features_only`, every stage) on a {r0['img_size'][0]}x{r0['img_size'][1]} "
        f"input, batch {r0['batch']}, fp32, {r0['threads']} threads; images/s as median (min-max) of {r0['repeats']} "
        f"repeats of {r0['iters']} iterations after {r0['warmup']} warm-up iterations, each model in a fresh "
        "process. `fwd`: forward under `inference_mode`; `fwd+bwd`: forward, backward of the sum of the features' "
        "means and an SGD step. MACs of the forward pass counted by fvcore. `vs same-run baseline`: measured in "
        "the same run, timm's same architecture or the same model done the reference implementations' way.",
        "",
        "| model | input | params | GMACs | CL | fwd img/s | fwd+bwd img/s | vs same-run baseline (fwd / fwd+bwd) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = "x".join(map(str, r["img_size"]))
        lines.append(f"| {r['model']} | {size} | {r['params'] / 1e6:.3f}M | {r['macs'] / 1e9:.1f} | "
                     f"{'yes' if r['channels_last'] else 'no'} | {_rate(r['infer'])} | {_rate(r['train'])} | "
                     f"{_vs_baseline(r)} |")
    return "\n".join(lines) + "\n"


def bench_models(args) -> int:
    import models

    from pipeline.io import atomic_write_json, atomic_write_text

    names = args.models or models.list_models()
    unknown = sorted(set(names) - set(models.list_models()))
    if unknown:
        print(f"error: unknown models {unknown}; registered: {', '.join(models.list_models())}", file=sys.stderr)
        return 2
    if args.batch is None:
        args.batch = 1 if args.dense else 8
    # The yardstick scales the official figures, which exist for the classifiers only.
    yardstick = None if args.dense else _run_isolated(YARDSTICK, "timm", args, channels_last=False)
    rows = []
    for name in names:
        row = _run_isolated(name, "project", args)
        if args.baselines and name in TIMM_SAME:
            row["baseline"] = _run_isolated(TIMM_SAME[name], "timm", args)
        elif args.baselines and (baseline := _same_model_baseline(name)) is not None:
            cl = baseline[2] if baseline[2] is not None else row["channels_last"]
            row["baseline"] = _run_isolated(name, "project", args, baseline=baseline, channels_last=cl)
        rows.append(row)
        print(f"{name}: {row['params'] / 1e6:.2f}M params, {row['macs'] / 1e9:.3f} GMACs, "
              f"infer {_rate(row['infer'])} img/s, train {_rate(row['train'])} img/s", file=sys.stderr, flush=True)
    if args.dense:
        md, stem = render_dense(rows), "models_dense"
    else:
        md, stem = render_markdown(rows, yaml.safe_load(ANCHORS.read_text())["anchors"], yardstick), "models"
    out = Path(args.out)
    atomic_write_text(out / f"{stem}.md", md)
    atomic_write_json(out / f"{stem}.json", {"yardstick": yardstick, "rows": rows})
    print(json.dumps(rows, indent=1) if args.json else md)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks; `bench models`: params, MACs and CPU throughput")
    p.add_argument("what", choices=["models"])
    p.add_argument("--models", nargs="+", help="registered model names (default: all)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    p.add_argument("--dense", action="store_true",
                   help=f"backbone features at {DENSE_SIZE[0]}x{DENSE_SIZE[1]} (detection and segmentation), batch 1; "
                        "writes models_dense.md/.json")
    p.add_argument("--batch", type=int, help="images per iteration (default: 8, with --dense 1)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="auto: on for conv-heavy families and timm baselines")
    p.add_argument("--no-baselines", dest="baselines", action="store_false",
                   help="skip the same-run baselines (halves the time; the yardstick is still measured)")
    p.add_argument("--out", default=str(ROOT / "reports" / "bench"), help="folder for models[_dense].md and .json")
    p.set_defaults(func=bench_models)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench _one")
    parser.add_argument("command", choices=["_one"])
    parser.add_argument("name")
    parser.add_argument("--source", choices=["project", "timm"], default="project")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--overrides", default="{}", help="model keyword overrides as JSON (a baseline)")
    parser.add_argument("--label", help="what the overrides change, appended to the model name")
    parser.add_argument("--dense", action="store_true", help="the backbone's features at DENSE_SIZE")
    a = parser.parse_args(argv)
    print(json.dumps(measure_one(a.name, a.source, a.batch, a.warmup, a.repeats, a.iters, a.channels_last,
                                 a.threads, json.loads(a.overrides), a.label, a.dense)))


if __name__ == "__main__":
    main()

"""Reports that set measured numbers beside the papers' numbers, each with its provenance."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

from pipeline import registry, settings, targets
from pipeline.io import atomic_write_text


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def comparison_rows(paper_row: registry.Row, measured: dict) -> list[str]:
    lines = ["| metric | measured | paper |", "|---|---|---|"]
    for metric, paper_value in paper_row.metrics.items():
        paper_txt = _num(paper_value) if paper_value is not None else "paper value not available"
        lines.append(f"| {metric} | {_num(measured.get(metric))} | {paper_txt} |")
    lines += ["", f"Paper values: {paper_row['evidence']}, {paper_row['source']}."]
    return lines


def demo_report(row: registry.Row, pretrain_metrics: Path, eval_metrics: Path, settings_files: list[Path],
                out: Path) -> str:
    paper = registry.paper(row.paper)
    table = registry.table(row.paper, row.table)
    pre = json.loads(Path(pretrain_metrics).read_text())
    ev = json.loads(Path(eval_metrics).read_text())
    jobs = {doc["job"]: (doc, path) for path in settings_files for doc in [settings.read(path)]}
    (pt, pt_file), (ft, ft_file) = jobs["pretrain"], jobs["finetune"]
    pv, fv = pt["values"], ft["values"]
    lines = [
        "# Demo: the whole pipeline at smoke scale",
        "",
        "**SMOKE SCALE. These measured numbers are not a reproduction.** The demo runs every stage of the "
        "real DAG (prepare data, ImageNet pretraining, detectron2 Mask R-CNN fine-tuning, pycocotools "
        "evaluation) on a few embedded photos for a few steps, to show the pipeline works end to end. "
        "A real reproduction trains on ImageNet-1k and COCO 2017 with the paper's schedule.",
        "",
        f"Compared row: {paper['name']} {table['title']}, `{row.id}`: {row['row']}, {row['task']}, "
        f"{row['dataset']}, schedule {row['schedule']}, resolution {row['resolution']}.",
        "",
        *comparison_rows(row, ev),
        "",
        "## Provenance of the measured numbers",
        "",
        f"- Backbone `{pre['model']}` pretrained with the `{pt['recipe']}` recipe shrunk by the smoke profile "
        f"`{pt['smoke']['profile']}`: {pv['steps']} steps (batch {pv['batch_size']}, {pv['img_size']} px) on the "
        f"embedded ImageNet-format set: top-1 {pre['top1']:.1f} %, top-5 {pre['top5']:.1f} % on its "
        f"{pre['val_images']} val photos (`{pretrain_metrics}`; settings `{pt_file}`).",
        f"- Mask R-CNN + FPN (detectron2 v0.6) fine-tuned from that checkpoint with the `{ft['recipe']}` recipe, "
        f"schedule `{ft['schedule']}` shrunk to {fv['iters']} iterations (batch {fv['batch_size']}, short side "
        f"{', '.join(map(str, fv['short_side']))}) on the embedded COCO-format train split (settings `{ft_file}`).",
        f"- Evaluated on the embedded val split ({ev['images']} image) with {ev['evaluator']}, "
        f"score threshold {ev['score_thresh']} (`{eval_metrics}`).",
        f"- Paper numbers: `config/papers/{row.paper}.yaml`, table `{row.table}`, row `{row.id}` "
        f"(evidence `{row['evidence']}`).",
        f"- Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on "
        f"{platform.node() or 'unknown host'} ({platform.machine()}, Python {platform.python_version()}).",
        "",
    ]
    text = "\n".join(lines)
    atomic_write_text(out, text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="write reports/demo.md")
    parser.add_argument("--config", default=str(registry.CONFIG_DIR / "config.yaml"))
    parser.add_argument("--pretrain-metrics", required=True, type=Path)
    parser.add_argument("--eval-metrics", required=True, type=Path)
    parser.add_argument("--settings", nargs="+", required=True, type=Path, help="the demo jobs' settings files")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    run = targets.demo_run(registry.load_yaml(Path(args.config)))
    demo_report(registry.row(run.paper, run.table, run.row), args.pretrain_metrics, args.eval_metrics,
                args.settings, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

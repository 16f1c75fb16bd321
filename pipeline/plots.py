"""The figures of a table report (matplotlib, PNG): Δ per row with the tolerance band, accuracy against
parameters and MACs (paper and measured points, the papers' Figure 1 style), and each run's training curves
from the history its engine wrote."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import engine

PAPER_COLOR, MEASURED_COLOR, BAND_COLOR = "#7f7f7f", "#1f77b4", "#2ca02c"


@dataclass(frozen=True)
class Figure:
    path: Path
    title: str
    caption: str


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def delta_figure(table: dict, rows, out: Path) -> Figure | None:
    """Measured minus paper, per row and metric, each with its band shaded."""
    items = [(f"{r.row['row']} {j.metric}", j) for r in rows for j in r.judgements if j.delta is not None]
    if not items:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(items) + 1.2), layout="constrained")
    for y, (_, j) in enumerate(items):
        if j.band is not None:
            ax.fill_betweenx([y - 0.4, y + 0.4], -j.band.width, j.band.width, color=BAND_COLOR, alpha=0.2, lw=0)
        ax.errorbar(j.delta, y, xerr=j.std or 0, fmt="o", color=MEASURED_COLOR, capsize=3)
    ax.axvline(0, color=PAPER_COLOR, lw=1)
    ax.set_yticks(range(len(items)), [label for label, _ in items], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Δ = measured − paper (points)")
    ax.set_title(f"{table['paper_name']} {table['title']}: Δ per row")
    return Figure(_save(fig, out / "delta.png"), "Δ per row",
                  "Measured mean (± std over seeds) minus the paper's value; the shaded band is the metric's "
                  "tolerance (config/report.yaml).")


def cost_figures(table: dict, rows, out: Path) -> list[Figure]:
    """Accuracy against parameters and against MACs: the paper's points and the measured ones."""
    metric = _headline(rows)
    found = []
    for key, label in (("params_m", "parameters (M)"), ("flops_g", "MACs (G)")):
        points = [(r, j) for r in rows for j in r.judgements if j.metric == metric]
        paper = [(r.cost[f"paper_{key}"], j.paper, r.row["row"]) for r, j in points
                 if r.cost.get(f"paper_{key}") and j.paper is not None]
        if len(paper) < 2:
            continue
        measured = [(r.cost[key], j.mean) for r, j in points if r.cost.get(key) and j.mean is not None]
        found.append(_scatter(table, paper, measured, metric, label, out / f"{metric}_vs_{key}.png"))
    return found


def _headline(rows) -> str | None:
    """The first metric the table's rows report (top1, box_AP, mIoU, ...)."""
    for r in rows:
        for j in r.judgements:
            return j.metric
    return None


def _scatter(table, paper, measured, metric, label, path) -> Figure:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.scatter([x for x, _, _ in paper], [y for _, y, _ in paper], color=PAPER_COLOR, label="paper")
    for x, y, name in paper:
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if measured:
        ax.scatter([x for x, _ in measured], [y for _, y in measured], color=MEASURED_COLOR, marker="s",
                   label="measured")
    ax.set_xlabel(label)
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.set_title(f"{table['paper_name']} {table['title']}: {metric} vs {label}")
    return Figure(_save(fig, path), f"{metric} vs {label}",
                  f"The paper's rows (grey) and the measured ones (blue); {label} as the paper counts them.")


def family_figures(table: dict, rows, out: Path) -> list[Figure]:
    """The project's tables: each compared metric's mean with its 95 % interval against the backbone's MACs and
    against the pretraining's measured images/s, one point per row (family)."""
    found = []
    for metric in table.get("comparison", {}):
        points = [(r, r.row["summary"][metric]) for r in rows if metric in r.row.get("summary", {})]
        for key, label, name in (("backbone_flops_g", "backbone MACs at 224 (G)", "macs"),
                                 ("pretrain_images_per_s", "pretraining images/s (measured)", "throughput")):
            xs = [(r.cost.get(key) if key in r.cost else r.row.get(key), s, r.row["row"]) for r, s in points]
            xs = [(x, s, label_) for x, s, label_ in xs if x]
            if len(xs) < 2:
                continue
            plt = _pyplot()
            fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
            for x, summ, row in xs:
                ci = summ["ci95"] or [summ["mean"], summ["mean"]]
                ax.errorbar(x, summ["mean"], yerr=[[summ["mean"] - ci[0]], [ci[1] - summ["mean"]]], fmt="o",
                            color=MEASURED_COLOR, capsize=3)
                ax.annotate(row, (x, summ["mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(label)
            ax.set_ylabel(metric)
            ax.set_title(f"{table['title']}: {metric} vs {label}", fontsize=9)
            found.append(Figure(_save(fig, out / f"{metric}_vs_{name}.png"), f"{metric} vs {label}",
                                f"Mean over seeds with its 95 % interval, one point per family; {label}."))
    return found


def curve_figure(name: str, job: str, folder: Path, out: Path) -> Figure | None:
    history = engine.read_history(job, folder)
    loss_key = engine.CURVE_COLUMNS[job]["train"]["loss"]
    steps = [h.get("step", h.get("iteration")) for h in history if loss_key in h]
    if not steps:
        return None
    plt = _pyplot()
    fig, (ax, lr_ax) = plt.subplots(1, 2, figsize=(8, 3), layout="constrained")
    ax.plot(steps, [h[loss_key] for h in history if loss_key in h], color=MEASURED_COLOR)
    ax.set_xlabel("iteration" if job == "finetune" else "step")
    ax.set_ylabel(loss_key)
    evals = [(h.get("step"), h[k]) for h in history for k in ("top1",) if k in h]
    if evals:
        twin = ax.twinx()
        twin.plot([s for s, _ in evals], [v for _, v in evals], "s", color=BAND_COLOR)
        twin.set_ylabel("top-1 (%)")
    lr_ax.plot(steps, [h.get("lr") for h in history if loss_key in h], color=PAPER_COLOR)
    lr_ax.set_ylabel("lr")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    lr_ax.set_xlabel(ax.get_xlabel())
    fig.suptitle(f"{name}: {job}", fontsize=9)
    return Figure(_save(fig, out / f"curves_{_slug(name)}_{job}.png"), f"{name}: {job} curves",
                  f"Loss and learning rate per {ax.get_xlabel()} ({folder}).")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def table_figures(table: dict, rows, out: Path) -> list[Figure]:
    """Every figure of a table report, written under `out`."""
    found = [f for f in [delta_figure(table, rows, out), *cost_figures(table, rows, out),
                         *family_figures(table, rows, out)] if f is not None]
    for r in rows:
        for seed, files in r.row["settings"].items():
            for job, settings_file in files.items():
                if job in ("pretrain", "finetune"):
                    fig = curve_figure(f"{r.row['id']} seed {seed}", job, Path(settings_file).parent, out)
                    found += [fig] if fig else []
    return found

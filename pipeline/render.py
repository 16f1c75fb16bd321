"""A table report as Markdown (figures as files beside it) and as one self-contained HTML page (figures inline,
no network needed), and the index of every table; both forms from the same analysis (pipeline/report.py)."""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
import re
from pathlib import Path

from pipeline.io import atomic_write_text
from pipeline.registry import PROJECT

SMOKE_BANNER = ("**SMOKE SCALE. These measured numbers are not a reproduction.** Every job of this target's DAG "
                "ran (data preparation, then training and evaluation, or for released checkpoints fetching, "
                "conversion and evaluation) on a few embedded photos, training for a few steps, to show the pipeline "
                "works end to end; no verdict applies. A real reproduction runs on ImageNet-1k, COCO 2017 or ADE20K "
                "with the paper's schedule.")
VERDICT_COLORS = {"reproduced": "#d4edda", "below": "#f8d7da", "above": "#fff3cd", "smoke": "#e2e3e5",
                  "not measured": "#f1f1f1", "paper value not available": "#f1f1f1", "no band": "#f1f1f1"}


def number(value, digits: int = 1) -> str:
    """A value at `digits` decimals, or a dash for none."""
    return "–" if value is None else f"{value:.{digits}f}"


def _measured(j) -> str:
    if j.mean is None:
        return "–"
    spread = f" ± {j.std:.2f}" if j.std is not None else ""
    return f"{j.mean:.1f}{spread} (n={len(j.values)})"


def _delta(j) -> str:
    return "–" if j.delta is None else f"{j.delta:+.1f}"


def _band(j) -> str:
    return "–" if j.band is None else f"±{j.band.width:g}"


def result_rows(rows) -> list[list[str]]:
    """One line per row and metric: row, metric, paper, measured, Δ, band, verdict."""
    out = []
    for r in rows:
        for j in r.judgements:
            verdict = j.verdict + (f" ({j.why})" if j.verdict == "not measured" and j.why else "")
            out.append([r.row["row"], j.metric, number(j.paper), _measured(j), _delta(j), _band(j), verdict])
    return out


RESULT_HEADER = ["row", "metric", "paper", "measured (mean ± std, n)", "Δ", "band", "verdict"]


def _kind(table: dict) -> str:
    return "comparison report" if table["paper"] == PROJECT else "reproduction report"


def _header_lines(table: dict, table_json: Path) -> list[str]:
    number = table["number"]
    first = (f"The project's own table ({table['title']}): no paper ran this comparison, so no row has a paper "
             "value; every row trains with the same recipes (`config/papers/project.yaml`)."
             if table["paper"] == PROJECT else None)
    return [
        first or f"Paper: {table['paper_name']} (arXiv {table.get('arxiv') or 'n/a'}), {table['title']}"
        + ("" if number.get("verified", True) else f" (table number unverified: {number.get('note')})"),
        f"Scale `{table['scale']}`, seeds {', '.join(map(str, table['seeds']))}; code {table['code_version']}; "
        f"gathered {table.get('gathered', 'n/a')} into `{table_json}`.",
    ]


def _cost_line(r) -> str | None:
    c = r.cost
    if not any(c.get(k) for k in ("paper_params_m", "params_m", "paper_flops_g", "flops_g")):
        return None
    text = f"parameters {number(c.get('params_m'))} M measured, {number(c.get('paper_params_m'))} M in the paper"
    if c.get("paper_flops_g") or c.get("flops_g"):
        text += (f"; MACs {number(c.get('flops_g'), 2)} G measured, {number(c.get('paper_flops_g'), 2)} G in the paper "
                 f"({c.get('convention') or 'convention not stated'})")
    return text


def _usage_lines(r) -> list[str]:
    lines = []
    for u in r.usage:
        if u.seconds is None and u.plan_gpu_hours is None:
            continue
        ran = (f"{u.seconds / 60:.1f} min wall, {u.gpu_hours:.2f} GPU-h measured" if u.seconds is not None
               else "not run yet")
        sacct = f", {u.sacct_gpu_hours:.2f} GPU-h by sacct" if u.sacct_gpu_hours is not None else ""
        plan = f", plan limit {u.plan_gpu_hours:g} GPU-h" if u.plan_gpu_hours is not None else ""
        lines.append(f"{u.job}: {ran}{sacct}{plan}{_where(u.environment)}")
    return lines


def _where(env: dict) -> str:
    if not env:
        return ""
    versions = ", ".join(f"{name} {env[key] or 'n/a'}" for name, key in (
        ("Python", "python"), ("torch", "torch"), ("CUDA", "cuda"), ("cuDNN", "cudnn"), ("detectron2", "detectron2")))
    return f" on {env['processes']} × {env['device']} at {env['hostname']} ({versions})"


def _bands_used(rows) -> dict:
    return {j.band.kind: j.band for r in rows for j in r.judgements if j.band is not None}


def _rel(path: str, base: Path) -> str:
    return os.path.relpath(path, base)


LINK = re.compile(r"\[(results/[^]\s]+)\](?!\()")  # [results/...]: a file the report names, linked from where it lies


def _md_links(text: str, base: Path) -> str:
    return LINK.sub(lambda m: f"[{m.group(1)}]({_rel(m.group(1), base)})", text)


def _html_links(text: str, base: Path) -> str:
    return LINK.sub(lambda m: f"<a href='{_rel(m.group(1), base)}'>{m.group(1)}</a>", text)


def _ranking_intro(table: dict) -> str:
    comp = next(iter(table["comparison"].values()))
    return (f"Each row ran with seeds {', '.join(map(str, table['seeds']))}. Intervals at "
            f"{comp['confidence']:.0%}: {comp['interval']}. A place is claimed only where the intervals of the "
            "differences allow it; a range of places means these seeds cannot order the row against its "
            "neighbours.")


def ranking_sections(table: dict, rows) -> list[tuple[str, list[list[str]], list[str]]]:
    """(metric, ranking rows, pairwise lines) for each metric the table compares across rows."""
    from pipeline.report import pairwise_lines, ranking

    ranks, pairs = ranking(table, rows), pairwise_lines(table, rows)
    return [(metric, ranks[metric], pairs[metric]) for metric in ranks]


def markdown(table: dict, rows, figures, out: Path, table_json: Path) -> str:
    name = out.stem
    lines = [f"# {table['paper_name']} {table['title']}: {_kind(table)} (`{name}`)", ""]
    if table["scale"] == "smoke":
        lines += [SMOKE_BANNER, ""]
    lines += [*_header_lines(table, table_json), "", "## Results", "",
              "| " + " | ".join(RESULT_HEADER) + " |", "|" + "---|" * len(RESULT_HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in result_rows(rows)]
    lines += ["", "Bands: " + "; ".join(f"{k} ±{b.width:g} ({b.source})" for k, b in _bands_used(rows).items())
              if _bands_used(rows) else "Bands: none apply.", ""]
    sections = ranking_sections(table, rows) if table.get("comparison") else []
    if sections:
        from pipeline.report import RANKING_HEADER

        lines += ["## Ranking across families", "", _ranking_intro(table), ""]
        for metric, ranked, pairs in sections:
            lines += [f"### {metric}", "", "| " + " | ".join(RANKING_HEADER) + " |", "|" + "---|" * len(RANKING_HEADER)]
            lines += ["| " + " | ".join(cells) + " |" for cells in ranked]
            lines += ["", "Pairwise (difference of means, its interval):", ""] + [f"- {p}" for p in pairs] + [""]
    for r in rows:
        lines += [f"## {r.row['row']} (`{r.row['id']}`)", "", "Deviations from the paper's recipe:", ""]
        lines += [f"- {d}" for d in r.deviations] + ["", "Provenance:", ""]
        lines += [f"- {_md_links(p, out.parent)}" for p in r.provenance]
        lines += [f"- {u}" for u in _usage_lines(r)]
        lines += [f"- {c}" for c in [_cost_line(r)] if c] + [""]
    if table["not_run"]:
        lines += ["## Rows not run", ""] + [f"- {n['row']} (`{n['id']}`): {n['why']}" for n in table["not_run"]]
        lines += [""]
    if figures:
        lines += ["## Figures", ""]
        for f in figures:
            lines += [f"![{f.title}]({_rel(str(f.path), out.parent)})", "", f"*{f.caption}*", ""]
    lines += [f"Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
              "`python -m pipeline report`.", ""]
    return "\n".join(lines)


def write_markdown(table: dict, rows, figures, out: Path, table_json: Path) -> None:
    atomic_write_text(out, markdown(table, rows, figures, out, table_json))


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f5f5f5}.banner{background:#fff3cd;border:1px solid #e0c36a;padding:.8em;margin:1em 0}
figure{margin:1.5em 0}figcaption{font-size:.9em;color:#555}img{max-width:100%}code{font-size:.9em}"""


def _esc(text) -> str:
    return html.escape(str(text))


def _inline(text) -> str:
    """Escaped text whose `backticked` parts become <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _esc(text))


def _html_table(header: list[str], rows: list[list[str]], verdict_col: int | None = None) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for cells in rows:
        style = ""
        if verdict_col is not None:
            style = f' style="background:{VERDICT_COLORS.get(cells[verdict_col].split(" (")[0], "#fff")}"'
        body.append(f"<tr{style}>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _inline_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def page(table: dict, rows, figures, table_json: Path, out: Path) -> str:
    name, base = out.stem, out.parent
    parts = [f"<h1>{_esc(table['paper_name'])} {_esc(table['title'])}: {_kind(table)} "
             f"(<code>{_esc(name)}</code>)</h1>"]
    if table["scale"] == "smoke":
        parts.append(f"<div class='banner'>{_esc(SMOKE_BANNER.replace('**', ''))}</div>")
    parts += [f"<p>{_inline(line)}</p>" for line in _header_lines(table, table_json)]
    parts += ["<h2>Results</h2>", _html_table(RESULT_HEADER, result_rows(rows), verdict_col=6)]
    parts += [f"<p>Band {_esc(k)} ±{b.width:g}: {_esc(b.source)}</p>" for k, b in _bands_used(rows).items()]
    sections = ranking_sections(table, rows) if table.get("comparison") else []
    if sections:
        from pipeline.report import RANKING_HEADER

        parts += ["<h2>Ranking across families</h2>", f"<p>{_esc(_ranking_intro(table))}</p>"]
        for metric, ranked, pairs in sections:
            parts += [f"<h3>{_esc(metric)}</h3>", _html_table(RANKING_HEADER, ranked),
                      "<ul>" + "".join(f"<li>{_esc(p)}</li>" for p in pairs) + "</ul>"]
    for r in rows:
        items = [*r.deviations, *r.provenance, *_usage_lines(r), *[c for c in [_cost_line(r)] if c]]
        parts += [f"<h2>{_esc(r.row['row'])} (<code>{_esc(r.row['id'])}</code>)</h2>",
                  "<ul>" + "".join(f"<li>{_html_links(_inline(i), base)}</li>" for i in items) + "</ul>"]
    if table["not_run"]:
        parts += ["<h2>Rows not run</h2>", "<ul>" + "".join(f"<li>{_esc(n['row'])}: {_esc(n['why'])}</li>"
                                                            for n in table["not_run"]) + "</ul>"]
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [f"<figure><img src='{_inline_png(f.path)}' alt='{_esc(f.title)}'>"
                  f"<figcaption>{_esc(f.caption)}</figcaption></figure>" for f in figures]
    return _document(f"{table['paper_name']} {table['title']} report", "\n".join(parts))


def _document(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def write_html(table: dict, rows, figures, out: Path, table_json: Path) -> None:
    atomic_write_text(out, page(table, rows, figures, table_json, out))


INDEX_HEADER = ["table", "paper", "status", "report", "last run", "commit"]
README_HEAD = """# reports/

Generated, and rewritten by every report job (`python -m pipeline report --all` rebuilds them all from the
results without running anything). Each report sets measured numbers beside the papers' numbers
(`config/papers/`) with Δ, a verdict against a tolerance band (`config/report.yaml`), the runs' deviations from
the paper's recipe and the provenance of every number: `<target>.md` with its figures in `<target>/`, and the
self-contained `<target>.html`; `index.html` is this list as a page. Smoke-scale tables have theirs under
`smoke/`: `smoke/demo.md`/`smoke/demo.html` come from `make demo`.

- `bench/models.md`, `bench/models.json`: written by `python -m pipeline bench models`; parameters, MACs and CPU
  throughput with same-run baselines, for representatives of every family at the full protocol.
- `bench/all/models.md`, `bench/all/models.json`: the same command for every registered variant
  (`--out reports/bench/all`) at a reduced protocol. Each committed copy records its command and settings.
- `bench/models_dense.md`, `bench/models_dense.json`: `python -m pipeline bench models --dense`, each family's
  backbone features at 800x1216 with the same-run baselines.
- `bench/gpu.md`, `bench/gpu.json`: `make gpu-check` on one CUDA GPU (AMP training steps, detector iterations at
  800x1333, DDP through torchrun and detectron2's launch), when it has been run.

## Tables
"""


def write_index(entries: list[dict], reports: Path) -> tuple[Path, Path]:
    """reports/README.md and reports/index.html listing every table target."""
    md_rows, html_rows = [], []
    for e in entries:
        md = e["report"] and e["report"].removesuffix(".html") + ".md"
        link = f"[{md}]({md})" if md else "–"
        md_rows.append(f"| {e['target']} | {e['paper']} {e['title']} | {e['status']} | {link} | "
                       f"{e['date'] or '–'} | {(e['commit'] or '–')[:12]} |")
        cell = f"<a href='{_esc(e['report'])}'>{_esc(e['report'])}</a>" if e["report"] else "–"
        html_rows.append(f"<tr><td>{_esc(e['target'])}</td><td>{_esc(e['paper'])} {_esc(e['title'])}</td>"
                         f"<td>{_esc(e['status'])}</td><td>{cell}</td><td>{_esc(e['date'] or '–')}</td>"
                         f"<td>{_esc((e['commit'] or '–')[:12])}</td></tr>")
    md = reports / "README.md"
    atomic_write_text(md, "\n".join([README_HEAD, "| " + " | ".join(INDEX_HEADER) + " |",
                                     "|" + "---|" * len(INDEX_HEADER), *md_rows, ""]))
    head = "".join(f"<th>{h}</th>" for h in INDEX_HEADER)
    index = reports / "index.html"
    atomic_write_text(index, _document("backbone-repro reports", "<h1>Reports</h1><table><thead><tr>" + head +
                                       "</tr></thead><tbody>" + "".join(html_rows) + "</tbody></table>"))
    return md, index

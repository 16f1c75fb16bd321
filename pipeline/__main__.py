"""Command line: `python -m pipeline <command>`.

    tables [--paper P] [--json]   list the registry's tables and rows with their numbers
    plan TARGET ... [--config k=v]  GPUs, wall time and GPU-hours of a target's jobs; submits nothing
    stale [--root results] [--prune]  work dirs moved aside when a run's settings changed; --prune deletes them
    bench models [--models ...]   parameters, MACs and CPU throughput (reports/bench/models.md)
    report --table FILE | --all   reports/[smoke/]<target>.{md,html} and the index from gathered results; runs nothing
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from pipeline import bench, registry


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def cmd_tables(args) -> int:
    from tabulate import tabulate

    keys = [args.paper] if args.paper else list(registry.PAPERS)
    docs = {k: registry.paper(k, args.registry) for k in keys}
    if args.json:
        json.dump(docs, sys.stdout, indent=1)
        print()
        return 0
    for key, doc in docs.items():
        print(f"{doc['name']} ({key}): {doc['title']}, arXiv {doc['arxiv']}")
        for t in doc["tables"]:
            print(f"\n  {key}_{t['id']}: {t['title']} ({len(t['rows'])} rows)")
            if t.get("not_reproduced"):
                print(f"  not reproduced: {t['not_reproduced']}")
            body = [[r["row"], r.get("schedule") or "", _fmt(r.get("params_m")), _fmt(r.get("flops_g")),
                     "  ".join(f"{m} {_fmt(v)}" for m, v in r["metrics"].items()), r["evidence"]]
                    for r in t["rows"]]
            table = tabulate(body, headers=["row", "schedule", "params (M)", "GFLOPs", "metrics", "evidence"],
                             tablefmt="simple", disable_numparse=True)
            print("\n".join("    " + line for line in table.splitlines()))
        print()
    return 0


def cmd_plan(args) -> int:
    from pipeline import plan

    result = plan.plan(args.targets, plan.load_config(args.config))
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        print(plan.render(result))
    return 0


def cmd_stale(args) -> int:
    import shutil

    from pipeline.io import stale_dirs

    found = stale_dirs(args.root)
    for path, size in found:
        print(f"{size / 1e6:10.1f} MB  {path}")
        if args.prune:
            shutil.rmtree(path)
    total = sum(size for _, size in found) / 1e6
    print(f"{len(found)} stale work dirs, {total:.1f} MB{', deleted' if args.prune and found else ''}")
    return 0


def main(argv=None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `... | head` ends quietly
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:  # its own options (pipeline/report.py)
        from pipeline import report

        return report.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="backbone-repro pipeline tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tables", help="list paper tables and rows with their numbers")
    p.add_argument("--paper", choices=registry.PAPERS)
    p.add_argument("--json", action="store_true", help="print the validated registry as JSON")
    p.add_argument("--registry", type=Path, default=registry.PAPERS_DIR, help="folder of <paper>.yaml files")
    p.set_defaults(func=cmd_tables)
    p = sub.add_parser("plan", help="what a target's jobs ask for (GPUs, hours, GPU-hours); submits nothing")
    p.add_argument("targets", nargs="+", metavar="TARGET", help="<paper>_table<N>, a descriptive target, table<N>, all")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, as snakemake's --config (e.g. scale=smoke paper=hornet)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("stale", help="work dirs moved aside when a run's settings changed; --prune deletes them")
    p.add_argument("--root", type=Path, default=Path("results"))
    p.add_argument("--prune", action="store_true", help="delete them")
    p.set_defaults(func=cmd_stale)
    bench.add_parser(sub)
    sub.add_parser("report", help="reports/[smoke/]<target>.{md,html} and reports/index.html from gathered results",
                   add_help=False)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except registry.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

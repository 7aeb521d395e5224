"""`llmgate baseline save|list|show`: runs of ours stored as baselines, and every table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabulate import tabulate

from harness.baselines import (
    BASELINES_DIR,
    BaselineError,
    accuracy_tables,
    ours_baselines,
    perf_tables,
    save_ours,
)

EXAMPLES = """examples:
  llmgate baseline save reports/latest dev-cpu          store that run's perf records
  llmgate baseline list
  llmgate baseline show 003_qwen-7b_910b3
  pytest suites/perf --perf-baseline dev-cpu           gate against it"""


def add_parser(sub) -> None:
    baseline = sub.add_parser("baseline", help="store a run as a baseline; list and show them",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=EXAMPLES)
    actions = baseline.add_subparsers(dest="action", required=True)
    save = actions.add_parser("save", help="store a run's passed records, every sample "
                                           "included, as baseline NAME")
    save.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a reports/<run-id> directory")
    save.add_argument("name", metavar="NAME", help="letters, digits, '.', '_' and '-'")
    save.add_argument("--suite", choices=("perf", "accuracy"), default="perf",
                      help="which suite's records to store: perf (every sample) or accuracy "
                           "(every question's answer) (default: perf)")
    save.add_argument("--force", action="store_true", help="replace an existing NAME")
    actions.add_parser("list", help="every stored baseline with its provenance")
    show = actions.add_parser("show", help="the rows of one baseline")
    show.add_argument("name", metavar="NAME")
    for parser in actions.choices.values():
        parser.add_argument("--baselines-dir", type=Path, default=BASELINES_DIR,
                            help="default: the project's baselines/")


def main(args: argparse.Namespace) -> int:
    try:
        return {"save": save, "list": listing, "show": show}[args.action](args)
    except BaselineError as e:
        print(f"llmgate baseline: {e}", file=sys.stderr)
        return 2


def save(args) -> int:
    if not (args.run_dir / "run.json").exists() and not list(args.run_dir.glob("records-*")):
        raise BaselineError(f"{args.run_dir}: not a run directory (no run.json or records)")
    path = save_ours(args.run_dir, args.name, args.suite, args.baselines_dir, args.force)
    print(f"saved {path}")
    return 0


def listing(args) -> int:
    tables: dict[tuple[str, str], list] = {}
    for suite, rows in (("perf", perf_tables(args.baselines_dir)),
                        ("accuracy", accuracy_tables(args.baselines_dir))):
        for row in rows:
            tables.setdefault((suite, row.name), []).append(row)
    rows = [(name, suite, "table", rs[0].model,
             ", ".join(sorted({f"{r.hardware}:{r.device}" for r in rs})), len(rs), rs[0].source)
            for (suite, name), rs in tables.items()]
    for suite in ("perf", "accuracy"):
        for name, b in ours_baselines(args.baselines_dir, suite).items():
            cases = list(b.cases.values())
            rows.append((name, suite, "ours", ",".join(sorted({c["model"] for c in cases})),
                         ",".join(sorted({c.get("device") or c.get("hardware", "")
                                          for c in cases})), len(cases),
                         f"run {b.run.get('run_id', '?')} commit {b.run.get('commit', '?')[:10]} "
                         f"saved {b.saved}"))
    print(tabulate(rows, headers=("baseline", "suite", "kind", "model", "device", "rows",
                                  "provenance")))
    return 0


def show(args) -> int:
    root = args.baselines_dir
    perf = [r for r in perf_tables(root) if r.name == args.name]
    accuracy = [r for r in accuracy_tables(root) if r.name == args.name]
    ours = {**ours_baselines(root, "accuracy"), **ours_baselines(root, "perf")}.get(args.name)
    if perf:
        print(tabulate([(r.line, r.model, f"{r.hardware}:{r.device}", r.dtype, r.batch,
                         r.input_len or "", r.output_len or "",
                         f"grid {r.grid[0].start}..{r.grid[0].stop - 1}" if r.grid else "",
                         r.metric, r.value, r.unit) for r in perf],
                       headers=("row", "model", "device", "dtype", "batch", "in", "out", "grid",
                                "metric", "value", "unit")))
        print(f"\nsource: {perf[0].source} ({perf[0].table}); note: {perf[0].note}")
    elif accuracy:
        print(tabulate([(r.line, r.model, r.task, r.category, f"{r.hardware}:{r.device}",
                         r.dtype, r.role, r.score) for r in accuracy],
                       headers=("row", "model", "task", "category", "device", "dtype", "role",
                                "score")))
        print(f"\nsource: {accuracy[0].source} ({accuracy[0].table})")
    elif ours is not None:
        # perf: the gate's figures (the record's columns), as every command prints them
        print(tabulate([(c["case"], c.get("forward_first_token_time(ms)", ""),
                         c.get("forward_next_token_time(ms)", ""),
                         c.get("e2e_throughput_tokens_per_s", ""), c.get("accuracy", ""),
                         len(c.get("answers", [])) or len(c.get("samples", {}).get(
                             "response_s", []))) for c in ours.cases.values()],
                       headers=("case", "first ms", "next ms", "E2E tok/s", "accuracy",
                                "answers/repeats"), floatfmt=".4g"))
        print(f"\nrun {ours.run.get('run_id')} on {ours.run.get('host')}, commit "
              f"{ours.run.get('commit')}, torch {ours.run.get('torch')}, saved {ours.saved}")
    else:
        raise BaselineError(f"no baseline named {args.name!r} in {root}")
    return 0

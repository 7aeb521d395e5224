"""`llmgate report | merge | compare | history`: what can be done with stored runs.

Each reads the same records the suites wrote (`records-*.jsonl`) and calls the same harness
code the suites call (the perf gate, the paired accuracy test, the report), never a second
implementation.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from tabulate import tabulate

from harness import jsonl
from harness.baselines import read_answers_file
from harness.results import RECORD_FORMAT, RECORD_GLOB, ResultsStore, latest_rows, load_records
from harness.selection import completion_record, is_completion, merged, read_run, write_run


class RunError(ValueError):
    """A directory that is not a run, or runs that cannot be joined."""


# Differ between any two runs of the same thing.
VOLATILE = ("session", "worker", "time", "case_seconds")


def run_rows(path: Path) -> list[dict]:
    """The latest rows of the run in `path` (read once), else a one-line error saying why it
    is not a run llmgate can read."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: no such run directory")
    if not path.is_dir():
        raise RunError(f"{path}: not a directory (a run is the directory of its records)")
    if not list(path.glob(RECORD_GLOB)) and not (path / "run.json").exists():
        raise RunError(f"{path}: not a run (no {RECORD_GLOB} and no run.json)")
    records = load_records(path)
    newer = [r for r in records if r.get("format", 1) > RECORD_FORMAT]
    if newer:
        raise RunError(f"{path}: records of format {newer[0]['format']} are newer than this "
                       f"llmgate reads ({RECORD_FORMAT}); update llmgate")
    return latest_rows(records)


def cmd_report(args: argparse.Namespace) -> int:
    """Render the run's report; print its verdict, and exit 1 unless it passed (a CI job that
    renders a run again must not read a failed or interrupted one as a success)."""
    from harness.report.render import publish, run_verdict

    path = Path(args.run_dir)
    rows = run_rows(path)
    print(publish(path, rows))
    verdict = run_verdict(read_run(path), rows)
    print(f"llmgate {verdict['title']}" + (f": {verdict['why']}" if verdict["why"] else ""),
          file=sys.stdout if verdict["state"] in ("pass", "measured") else sys.stderr)
    return 0 if verdict["state"] in ("pass", "measured") else 1


# Fields two runs must agree on to be joined or compared as equals.
VERSION_FIELDS = ("thresholds_version", "task_version", "prompt_hash")


def _versions(rows: list[dict]) -> dict[tuple[str, str], set]:
    out: dict[tuple[str, str], set] = {}
    for row in rows:
        for field in VERSION_FIELDS:
            if row.get(field) is not None:
                out.setdefault((row.get("task") or row["suite"], field), set()).add(
                    str(row[field]))
    return out


def cmd_merge(args: argparse.Namespace) -> int:
    """Join shard runs into one run, as if it had run on one host. A merge that lacks a shard
    of a sharded selection, or joins a run that did not finish, is incomplete: it says which,
    and how many selected cases never ran, in red, and exits 1."""
    from harness.report.render import publish

    # Whether each run ran all it selected is decided again for the whole.
    runs = [(Path(p), [r for r in run_rows(p) if not is_completion(r)]) for p in args.run_dirs]
    inputs = [path for path, _ in runs]
    twice = next((p for i, p in enumerate(inputs) if p.resolve() in
                  [q.resolve() for q in inputs[:i]]), None)
    if twice is not None:
        raise RunError(f"{twice} is given twice: overlapping shards")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise RunError(f"{out}: exists and is not empty; choose another OUT or --force")
    seen: dict[tuple, Path] = {}
    for path, rows in runs:
        for row in rows:
            key = (row["suite"], row["case"], row["test"])
            if key in seen and row["suite"] != "run":
                raise RunError(f"{row['case']} {row['test']} is in both {seen[key]} and {path}: "
                               "overlapping shards")
            seen[key] = path
    versions = _versions([r for _, rows in runs for r in rows])
    mixed = {k: v for k, v in versions.items() if len(v) > 1}
    if mixed and not args.force:
        (scope, field), values = next(iter(mixed.items()))
        raise RunError(f"the runs measured different things: {scope} {field} "
                       f"{' vs '.join(sorted(values))}; --force to merge anyway")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shards = []
    for index, (path, rows) in enumerate(runs, start=1):
        jsonl.append(out / f"records-shard{index}.jsonl", rows)
        if (path / "accuracy").is_dir():
            shutil.copytree(path / "accuracy", out / "accuracy", dirs_exist_ok=True)
        shards.append({"path": str(path), **{k: v for k, v in (read_run(path) or {}).items()
                                             if k != "selection"}})  # the merge has them all
    rows = latest_rows([r for _, rows in runs for r in rows])
    selection, incomplete = merged([(path, read_run(path)) for path in inputs], rows)
    if incomplete:
        rows.append(ResultsStore(out, "merge").record(completion_record(incomplete, 0)))
    first = min(shards, key=lambda s: s.get("started", 0))
    run = {**{k: v for k, v in first.items() if k not in ("path", "run_id", "shard")},
           "run_id": out.name, "merged_from": shards,
           "duration_s": sum(s.get("duration_s", 0) for s in shards), "selection": selection,
           "status": "incomplete" if incomplete else "complete", "incomplete": incomplete}
    write_run(out, run)
    report = publish(out, rows)
    print(f"merged {len(inputs)} runs ({sum(len(rows) for _, rows in runs)} records) into "
          f"{out}; report: {report}")
    if incomplete:
        print(f"llmgate merge: INCOMPLETE: {incomplete}", file=sys.stderr)
    return 1 if incomplete else 0


def compare_runs(a: Path, b: Path, tolerance: float = 0.10) -> dict[str, list[dict]]:
    """Differences of run A against run B (B as the baseline), per suite."""
    from harness.accuracy.gate import paired_gate

    rows_a = {(r["case"], r["test"]): r for r in run_rows(a)}
    rows_b = {(r["case"], r["test"]): r for r in run_rows(b)}
    out: dict[str, list[dict]] = {"numerics": [], "perf": [], "accuracy": [], "outcome": []}
    if not rows_a.keys() & rows_b.keys():
        raise RunError(f"{a} and {b} have no case in common: nothing to compare")
    # A case of the baseline that A lacks was lost (a crash, a narrower selection): say so.
    out["missing"] = [{"case": case, "test": test, "only_in": "B" if (case, test) in rows_b
                       else "A"} for case, test in sorted(rows_a.keys() ^ rows_b.keys())]
    for key in sorted(rows_a.keys() & rows_b.keys()):
        ra, rb = rows_a[key], rows_b[key]
        if ra.get("outcome") != rb.get("outcome"):
            out["outcome"].append({"case": key[0], "test": key[1], "a": ra.get("outcome"),
                                   "b": rb.get("outcome"), "reason": ra.get("reason", "")})
        if ra["suite"] == "perf" and "samples" in ra and "samples" in rb:
            out["perf"] += _compare_perf(ra, rb, b, tolerance)  # a failed case most of all
        if ra.get("outcome") != "passed" or rb.get("outcome") != "passed":
            continue
        if ra["suite"] == "numerics" and "max_abs_diff" in ra and "max_abs_diff" in rb:
            da, db = ra["max_abs_diff"], rb["max_abs_diff"]
            if max(da, db) > 1e-6 and not (0.5 <= (da + 1e-12) / (db + 1e-12) <= 2):
                out["numerics"].append({"case": key[0], "test": key[1], "a": da, "b": db})
        elif ra["suite"] == "accuracy" and ra.get("answers_file") and rb.get("answers_file"):
            answers_a = read_answers_file(a / ra["answers_file"])
            answers_b = read_answers_file(b / rb["answers_file"])
            if ra["test"] == "test_humaneval":
                from harness.accuracy.humaneval import first_samples

                answers_a, answers_b = first_samples(answers_a), first_samples(answers_b)
            failures, results = paired_gate(ra.get("task", ""), answers_a, answers_b, b.name,
                                            1.0)
            overall = results[0] if results else {}
            if overall.get("lost") or overall.get("gained"):
                out["accuracy"].append({
                    "case": key[0], "a": overall["candidate"], "b": overall["reference"],
                    "right_to_wrong": overall["lost"], "wrong_to_right": overall["gained"],
                    "p_value": overall["p_value"]})
    return out


def _compare_perf(ra: dict, rb: dict, b: Path, tolerance: float) -> list[dict]:
    """Run A's perf case against run B's through the perf gate (the same figures and noise
    test): every metric beyond the tolerance, and every metric of a case that did not pass
    in either run, marked with its outcome."""
    from harness.baselines import OursBaseline
    from harness.cases import Case
    from harness.perf.gate import gate
    from harness.perf.timing import Samples

    case = Case(ra["model"], ra["hardware"], ra["dtype"], ra["batch"], ra["seqlen"], ra["out"])
    theirs = OursBaseline(str(b), b, "", {}, {case.id: {**rb, "case": case.id}})
    _, comparisons = gate(case, Samples(**ra["samples"]), ra.get("device", ""), [],
                          {b.name: theirs}, tolerance, None, None)
    outcome = ra.get("outcome") if ra.get("outcome") == rb.get("outcome") else \
        f"{ra.get('outcome')} (B {rb.get('outcome')})"
    rows = []
    for c in comparisons:
        slower = c["slowdown"] > 1 + tolerance and not c["passed"]
        faster = c["slowdown"] < 1 / (1 + tolerance)
        if slower or faster or outcome != "passed":
            # The case id as recorded: the gate's Case lacks the port and tag tokens.
            rows.append({"case": ra["case"], "metric": c["metric"], "a": c["ours"],
                         "b": c["theirs"], "ratio": c["slowdown"], "p_value": c["p_value"],
                         "change": "slower" if slower else "faster" if faster else "unchanged",
                         "outcome": "regressed (both runs passed)" if slower and
                         outcome == "passed" else outcome, "note": c["note"]})
    return rows


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = Path(args.run_a), Path(args.run_b)
    diff = compare_runs(a, b, args.tolerance)
    if not any(diff.values()):
        print(f"no differences between {a} and {b}")
        return 0
    for suite, rows in diff.items():
        if rows:
            print(f"\n{suite} ({len(rows)}): A = {a}, B = {b}")
            shown = [{k: (", ".join(v[:8]) + (" ..." if len(v) > 8 else "")
                          if isinstance(v, list) else v) for k, v in r.items()} for r in rows]
            print(tabulate(shown, headers="keys", floatfmt=".4g"))
    slower = sum(r["change"] == "slower" for r in diff["perf"])
    lost = [r for r in diff["accuracy"] if r["right_to_wrong"] and r["a"] < r["b"]]
    missing = sum(r["only_in"] == "B" for r in diff["missing"])
    problems = [f"{len(diff['outcome'])} outcomes changed" if diff["outcome"] else "",
                f"{slower} perf metrics slower beyond the tolerance" if slower else "",
                f"{len(lost)} accuracy cases lost questions" if lost else "",
                f"{missing} cases of B missing from A" if missing else ""]
    problems = [p for p in problems if p]
    print(f"\nA is worse than B: {'; '.join(problems)}" if problems
          else "\nA is not worse than B")
    return 1 if problems else 0


def cmd_history(args: argparse.Namespace) -> int:
    from harness.report.history import history_table, runs

    root = Path(args.results_dir)
    if not root.is_dir():
        raise RunError(f"{root}: no results directory")
    found = runs(root)
    if not found:
        raise RunError(f"{root}: no runs (no subdirectory with run.json)")
    table = history_table(root, {args.case} if args.case else None, last=args.last, found=found)
    if not table:
        print(f"no stored values{' for ' + args.case if args.case else ''} in {root}")
        return 0
    print(tabulate([(h["suite"], h["case"], h["test"], h["metric"], h["runs"],
                     " -> ".join(f"{v:.4g}" + (" (failed)" if outcome == "failed" else "")
                                 for _, v, outcome in h["values"]), h["regressed_at"])
                    for h in table],
                   headers=("suite", "case", "test", "metric", "runs",
                            f"last {args.last} values", "regressed at")))
    return 0

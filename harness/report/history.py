"""The trend of key metrics over the stored runs of a results root (the asv idea): when did a
regression enter?

Each run directory under the root with a `run.json` counts once, in order of its start time:
a run merged from shards (`merged_from`) stands for them, dated by its last shard, and the
shards it names are not counted again. A failed case keeps its values, marked: the regressed
case is the one to see. A metric is flagged at the first run where it got worse than in the
run before by more than its threshold (latency +10%, throughput -10%, accuracy -1 point,
max |dlogit| doubled).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from harness.report import charts
from harness.results import latest_rows, load_records

# name -> (suite, test or None, record field, higher is better, worse when ratio / delta beyond)
METRICS = {
    "next-token ms": ("perf", "test_perf", "forward_next_token_time(ms)", False, 1.10),
    "E2E tokens/s": ("perf", "test_perf", "e2e_throughput_tokens_per_s", True, 1.10),
    "accuracy": ("accuracy", None, "accuracy", True, 0.01),
    "max |dlogit|": ("numerics", "test_teacher_forced", "max_abs_diff", False, 2.0),
}


def _started(run: dict) -> float:
    shards = run.get("merged_from") or [run]
    return max(s.get("started", 0) for s in shards)


def runs(root: Path) -> list[tuple[str, dict, list[dict]]]:
    """(run id, run.json, latest rows) of every distinct run under `root`, oldest first."""
    found = {}
    for run_dir in Path(root).iterdir() if Path(root).is_dir() else []:
        meta = run_dir / "run.json"
        if run_dir.is_symlink() or not meta.exists():
            continue
        try:
            found[run_dir] = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    shards = {(s.get("run_id"), s.get("started")) for run in found.values()
              for s in run.get("merged_from", [])}
    distinct = [(run_dir.name, run, latest_rows(load_records(run_dir)))
                for run_dir, run in found.items()
                if (run.get("run_id", run_dir.name), run.get("started")) not in shards]
    return sorted(distinct, key=lambda r: (_started(r[1]), r[0]))


def series(root: Path, cases: set | None = None,
           found: list | None = None) -> dict[tuple[str, str, str, str], list]:
    """(suite, case, test, metric) -> [(run id, value, outcome)] over the runs (`found`,
    default: those under `root`), oldest first, of passed and failed cases. `cases`: only
    these case ids, or (suite, case, test) keys (a numerics case and a perf case may share an
    id: they are different series)."""
    out: dict[tuple[str, str, str, str], list] = {}
    for run_id, _, rows in runs(root) if found is None else found:
        for row in rows:
            key = (row["suite"], row["case"], row["test"])
            if row.get("outcome") not in ("passed", "failed") or (
                    cases is not None and row["case"] not in cases and key not in cases):
                continue
            for name, (suite, test, field, _, _) in METRICS.items():
                value = row.get(field)
                if row["suite"] == suite and (test is None or row["test"] == test) and \
                        isinstance(value, (int, float)) and math.isfinite(value):
                    out.setdefault((*key, name), []).append((run_id, value, row["outcome"]))
    return out


def regressed(name: str, before: float, after: float) -> bool:
    _, _, _, higher_better, threshold = METRICS[name]
    if name == "accuracy":
        return after < before - threshold
    if higher_better:
        return after * threshold < before
    return after > before * threshold


def history_table(root: Path, cases: set | None = None, last: int = 8,
                  found: list | None = None) -> list[dict]:
    """One row per (suite, case, test, metric): its values in the last runs (`found`,
    default: those under `root`) and where it regressed."""
    table = []
    for (suite, case_id, test, name), values in sorted(series(root, cases, found).items()):
        entered = next((values[i][0] for i in range(1, len(values))
                        if regressed(name, values[i - 1][1], values[i][1])), "")
        table.append({"suite": suite, "case": case_id, "test": test, "metric": name,
                      "values": values[-last:], "runs": len(values), "regressed_at": entered})
    return table


def history_charts(root: Path, cases: set[str] | None = None, per_metric: int = 6,
                   found: list | None = None) -> list[str]:
    """A trend chart per metric for the cases seen in the most runs (`found`, default: those
    under `root`) when there are >= 2; x is the run, labelled by its id; failed values are
    marked."""
    found = runs(root) if found is None else found
    data = series(root, cases, found)
    out = []
    for name in METRICS:
        # A metric belongs to one suite and test: its lines are named by case id.
        shown = sorted(((len(v), key) for key, v in data.items()
                        if key[3] == name and len(v) > 1), reverse=True)[:per_metric]
        if not shown:
            continue
        used = {r for _, key in shown for r, _, _ in data[key]}
        order = [run_id for run_id, _, _ in found if run_id in used]
        lines = {key[1]: [(order.index(r), v) for r, v, _ in data[key]] for _, key in shown}
        failed = [(order.index(r), v) for _, key in shown for r, v, outcome in data[key]
                  if outcome == "failed"]
        out.append(charts.lines(f"{name} over runs", "run (oldest first)", name, lines,
                                {"failed": failed} if failed else None, xticks=order))
    return out

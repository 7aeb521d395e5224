"""The trend of key metrics over the stored runs of a results root (the asv idea): when did a
regression enter?

Each run directory under the root with a `run.json` counts, in order of its start time. A
metric is flagged at the first run where it got worse than in the run before by more than its
threshold (latency +10%, throughput -10%, accuracy -1 point, max |dlogit| doubled).
"""

from __future__ import annotations

import json
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


def runs(root: Path) -> list[tuple[str, dict, list[dict]]]:
    """(run id, run.json, latest rows) of every run under `root`, oldest first."""
    found = []
    for run_dir in Path(root).iterdir() if Path(root).is_dir() else []:
        meta = run_dir / "run.json"
        if run_dir.is_symlink() or not meta.exists():
            continue
        try:
            run = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        found.append((run_dir.name, run, latest_rows(load_records(run_dir))))
    return sorted(found, key=lambda r: (r[1].get("started", 0), r[0]))


def series(root: Path, cases: set[str] | None = None) -> dict[tuple[str, str], list]:
    """(case, metric) -> [(run id, value)] over the runs, oldest first (only `cases`)."""
    out: dict[tuple[str, str], list] = {}
    for run_id, _, rows in runs(root):
        for row in rows:
            if row.get("outcome") != "passed" or (cases is not None and row["case"] not in cases):
                continue
            for name, (suite, test, field, _, _) in METRICS.items():
                value = row.get(field)
                if row["suite"] == suite and (test is None or row["test"] == test) and \
                        isinstance(value, (int, float)):
                    out.setdefault((row["case"], name), []).append((run_id, value))
    return out


def regressed(name: str, before: float, after: float) -> bool:
    _, _, _, higher_better, threshold = METRICS[name]
    if name == "accuracy":
        return after < before - threshold
    if higher_better:
        return after * threshold < before
    return after > before * threshold


def history_table(root: Path, cases: set[str] | None = None, last: int = 8) -> list[dict]:
    """One row per (case, metric): its values in the last runs and where it regressed."""
    table = []
    for (case_id, name), values in sorted(series(root, cases).items()):
        entered = next((values[i][0] for i in range(1, len(values))
                        if regressed(name, values[i - 1][1], values[i][1])), "")
        table.append({"case": case_id, "metric": name, "values": values[-last:],
                      "runs": len(values), "regressed_at": entered})
    return table


def history_charts(root: Path, cases: set[str] | None = None,
                   per_metric: int = 6) -> list[str]:
    """A trend chart per metric for the cases seen in the most runs (when there are >= 2)."""
    data = series(root, cases)
    out = []
    for name in METRICS:
        cases = sorted(((len(v), c) for (c, m), v in data.items() if m == name and len(v) > 1),
                       reverse=True)[:per_metric]
        if not cases:
            continue
        order = {run_id: i for i, (run_id, _, _) in enumerate(runs(root))}
        lines = {c: [(order[r], v) for r, v in data[(c, name)]] for _, c in cases}
        out.append(charts.lines(f"{name} over runs", "run (oldest first)", name, lines))
    return out

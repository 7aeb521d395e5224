"""Results store: every suite test writes structured records here.

Each process (the pytest controller, or each pytest-xdist worker) appends JSON lines to its own
file under `reports/<run-id>/`, flushing after every record, so an interrupted run keeps all
that was measured. At the end of the session the controller loads the records once, merges
them into one CSV per suite, sorted by case, and prints a short table.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import pandas as pd
import torch
from tabulate import tabulate

from harness import jsonl
from harness.provenance import provenance

RESULTS_DIR = "reports"  # the default results root, under the project's (pytest's) root
RECORD_GLOB = "records-*.jsonl"
RECORD_FORMAT = 1  # bump when a record's fields change meaning; newer ones are refused


def results_root(given: str | None, root: Path) -> Path:
    """--results-dir, else reports/ under `root` (pytest's rootdir, the CLI's project)."""
    return Path(given or Path(root) / RESULTS_DIR).expanduser()


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"


def environment() -> dict:
    """Machine and code provenance written next to the records. torch_npu and CANN are
    reported only where torch_npu was imported by this run (importing it elsewhere breaks);
    the tuning variables, CPU governor and Ascend versions come from `harness.provenance`."""
    import sys

    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    info = {"commit": commit, "host": platform.node(), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "load_1m": os.getloadavg()[0],
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "command": " ".join(sys.argv)}
    if "torch_npu" in sys.modules:
        info["torch_npu"] = getattr(sys.modules["torch_npu"], "__version__", "")
        info["cann"] = os.environ.get("ASCEND_TOOLKIT_HOME", "")
    if os.environ.get("LLMGATE_ZOO_COMMAND"):  # the seed command line `llmgate zoo` ran
        info["zoo_command"] = os.environ["LLMGATE_ZOO_COMMAND"]
    return {**info, **provenance()}


class ResultsStore:
    """Append-only JSON-lines records of one process."""

    def __init__(self, run_dir: Path, worker: str = "main"):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / f"records-{worker}.jsonl"

    def record(self, row: dict) -> dict:
        row = {**row, "format": RECORD_FORMAT, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        jsonl.append(self.path, [row])
        return row


def load_records(run_dir: Path) -> list[dict]:
    """Every record of a run, skipping a line cut short by an interrupted write."""
    return [row for file in sorted(Path(run_dir).glob(RECORD_GLOB)) for row in jsonl.read(file)]


MEASURED_ONLY = "measured only"


def measured_only(row: dict) -> bool:
    """A passed case that no baseline gated (none was comparable): measured, not judged.
    The perf and accuracy gates record `gated`; records from before it say so by
    `baselines_compared` 0; a check without baselines (numerics) always judges."""
    return row.get("outcome") == "passed" and not row.get(
        "gated", row.get("baselines_compared") != 0)


def tally(row: dict) -> str:
    """What a record counts as in a run's totals: its outcome, a measured-only pass apart."""
    return MEASURED_ONLY if measured_only(row) else row.get("outcome", "")


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per (suite, case, test): the one from the latest session of a resumed run."""
    latest: dict[tuple, dict] = {}
    for row in sorted(rows, key=lambda r: r.get("session", 0)):
        latest[(row["suite"], row["case"], row["test"])] = row
    return list(latest.values())


def merge(run_dir: Path, rows: list[dict] | None = None) -> dict[str, Path]:
    """Write `<suite>.csv` for each suite of the run's latest `rows` (default: read from
    `run_dir`), scalars only: samples and other lists stay in the JSON-lines records; returns
    the files written."""
    rows = latest_rows(load_records(run_dir)) if rows is None else rows
    written = {}
    for suite in sorted({row["suite"] for row in rows}):
        # Only the columns this suite's rows have; a NaN metric reads "nan", a metric the
        # row does not have stays empty.
        part = pd.DataFrame([{k: "nan" if v != v else v for k, v in r.items()
                              if not isinstance(v, (list, dict))}
                             for r in rows if r["suite"] == suite]).sort_values(["case", "test"])
        path = Path(run_dir) / f"{suite}.csv"
        part.to_csv(path, index=False)
        written[suite] = path
    return written


# Per suite: the columns of the console table, their headers and how each is printed.
SUMMARY_COLUMNS = {
    "numerics": {"max_abs_diff": ("max_abs_diff", "{:.3g}"), "min_cosine": ("min_cosine",
                                                                           "{:.6f}"),
                 "top1_agreement": ("top1", "{:.4f}"), "max_kl": ("max_kl", "{:.3g}"),
                 "rule": ("rule", "{}")},
    # the gate's figures, in the gate's, compare's and history's format (4 significant digits)
    "perf": {"forward_first_token_time(ms)": ("first ms", "{:.4g}"),
             "forward_next_token_time(ms)": ("next ms", "{:.4g}"),
             "e2e_throughput_tokens_per_s": ("E2E tok/s", "{:.4g}"),
             "pct_of_floor": ("% floor", "{:.0f}"), "ratio_next_token": ("next vs HF", "{:.2f}"),
             "baselines_compared": ("baselines", "{}"), "max_batch": ("max batch", "{}")},
    "accuracy": {"accuracy": ("accuracy", "{:.4f}"), "stderr": ("stderr", "{:.4f}"),
                 "accuracy_norm": ("acc_norm", "{:.4f}"),
                 "questions": ("questions", "{}"), "problems": ("problems", "{}"),
                 "isolation": ("isolation", "{}"), "baselines_compared": ("baselines", "{}")},
}


def summary_table(run_dir: Path, rows: list[dict] | None = None, max_rows: int = 60) -> str:
    """One table per suite of the run's latest `rows` (default: read from `run_dir`),
    failures and errors first, then skips, then passes."""
    rows = latest_rows(load_records(run_dir)) if rows is None else rows
    order = {"failed": 0, "error": 0, "skipped": 1, "passed": 2}
    sections = []
    for suite in sorted({r["suite"] for r in rows}):
        part = sorted((r for r in rows if r["suite"] == suite),
                      key=lambda r: (order.get(r.get("outcome"), 0), r["case"], r["test"]))
        columns = SUMMARY_COLUMNS.get(suite, {})
        columns = {c: spec for c, spec in columns.items() if any(c in r for r in part)}
        table = [[r["case"], r["test"], r.get("outcome", "")]
                 + [_format(r.get(c), fmt) for c, (_, fmt) in columns.items()]
                 + [_clip(r.get("reason") or r.get("failures") or "")]
                 for r in part[:max_rows]]
        headers = [header for header, _ in columns.values()]
        text = tabulate(table, headers=["case", "test", "outcome", *headers, "reason"],
                        tablefmt="simple")
        counts = [(sum(tally(r) == o for r in part), o)
                  for o in ("passed", MEASURED_ONLY, "failed", "error", "skipped")]
        counts = ", ".join(f"{n} {o}" for n, o in counts if n or o != MEASURED_ONLY)
        if len(part) > max_rows:
            text += f"\n... {len(part) - max_rows} more rows in {Path(run_dir) / suite}.csv"
        sections.append(f"{suite}: {counts}\n{text}")
    return "\n\n".join(sections)


def _format(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and value != value and fmt == "{}"):
        return ""
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _clip(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."

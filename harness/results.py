"""Results store: every suite test writes structured records here.

Each process (the pytest controller, or each pytest-xdist worker) appends JSON lines to its own
file under `reports/<run-id>/`, flushing after every record, so an interrupted run keeps all
that was measured. At the end of the session the controller merges the files into one CSV per
suite, sorted by case, and prints a short table.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import pandas as pd
import torch
from tabulate import tabulate

RECORD_GLOB = "records-*.jsonl"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"


def environment() -> dict:
    """Machine and code provenance written next to the records."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"commit": commit, "host": platform.node(), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}


class ResultsStore:
    """Append-only JSON-lines records of one process."""

    def __init__(self, run_dir: Path, worker: str = "main"):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / f"records-{worker}.jsonl"
        # A run killed mid-write leaves a partial last line: start on a fresh one.
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def record(self, suite: str, case: str, test: str, passed: bool, **metrics) -> dict:
        row = {"suite": suite, "case": case, "test": test, "passed": passed,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return row


def load_records(run_dir: Path) -> list[dict]:
    """Every record of a run, skipping a line cut short by an interrupted write."""
    rows = []
    for file in sorted(Path(run_dir).glob(RECORD_GLOB)):
        for line in file.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def merge(run_dir: Path) -> dict[str, Path]:
    """Write `<suite>.csv` for each suite in the run; returns the files written."""
    rows = load_records(run_dir)
    written = {}
    if not rows:
        return written
    frame = pd.DataFrame(rows)
    for suite, part in frame.groupby("suite"):
        part = part.dropna(axis=1, how="all").sort_values(["case", "test"])
        path = Path(run_dir) / f"{suite}.csv"
        part.to_csv(path, index=False)
        written[suite] = path
    return written


SUMMARY_COLUMNS = ("case", "test", "passed", "max_abs_diff", "min_cosine", "top1_agreement",
                   "max_kl", "limit")


def summary_table(run_dir: Path, max_rows: int = 60) -> str:
    rows = load_records(run_dir)
    if not rows:
        return ""
    table = [[_short(row.get(c, "")) for c in SUMMARY_COLUMNS]
             for row in sorted(rows, key=lambda r: (r["case"], r["test"]))]
    failed = [r for r in table if r[2] is False]
    shown = (failed + [r for r in table if r[2] is not False])[:max_rows]
    text = tabulate(shown, headers=SUMMARY_COLUMNS, tablefmt="simple")
    if len(table) > len(shown):
        text += f"\n... {len(table) - len(shown)} more rows in {run_dir}"
    return text


def _short(value):
    if isinstance(value, float):
        return f"{value:.3g}"
    return value

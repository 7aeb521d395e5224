"""Stored baselines: the source documents' tables and runs of ours saved as baselines.

`baselines/perf/*.csv` holds one file per performance table of the source documents, one
metric per row with its provenance (see `baselines/README.md`). `baselines/perf/ours/*.json`
holds runs of ours saved by `llmgate baseline save`, with every sample, the machine, the
library versions and the commit. Every malformed file fails with one line naming the file,
the row and the column.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

BASELINES_DIR = Path(__file__).resolve().parent.parent / "baselines"
PERF_COLUMNS = ("source", "table", "model", "hardware", "device", "dtype", "batch", "input_len",
                "output_len", "grid", "metric", "value", "unit", "note")
PERF_METRICS = ("first_token", "next_token", "e2e_throughput", "max_batch", "none")
PERF_UNITS = ("ms", "s", "tokens/s", "batch", "ambiguous", "none")
OURS_FORMAT = 1
EXTRA = "\0extra"  # csv.DictReader's key for fields beyond the header


class BaselineError(ValueError):
    """A baseline file that cannot be read as documented."""


@dataclass(frozen=True)
class PerfRow:
    """One metric of one source-table row. `grid` (in, out exponent ranges) marks a mean over
    every combination of 2^in x 2^out lengths instead of one cell."""

    name: str  # file stem, e.g. 003_qwen-7b_910b3
    line: int
    source: str
    table: str
    model: str
    hardware: str
    device: str
    dtype: str
    batch: int
    input_len: int | None
    output_len: int | None
    grid: tuple[range, range] | None
    metric: str
    value: float
    unit: str
    note: str

    def grid_cells(self) -> list[tuple[int, int]]:
        return [(2**i, 2**o) for i in self.grid[0] for o in self.grid[1]] if self.grid else []


@dataclass(frozen=True)
class OursBaseline:
    """A run of ours: per case id, its record (samples included)."""

    name: str
    path: Path
    saved: str
    run: dict
    cases: dict[str, dict]


def _int(file: Path, line: int, column: str, text: str, optional: bool = False) -> int | None:
    if optional and text == "":
        return None
    if not re.fullmatch(r"[0-9]+", text):
        raise BaselineError(f"{file}: row {line}, column {column!r}: {text!r} is not a "
                            "whole number")
    return int(text)


def _grid(file: Path, line: int, text: str) -> tuple[range, range] | None:
    if text == "":
        return None
    match = re.fullmatch(r"in=(\d+)\.\.(\d+);out=(\d+)\.\.(\d+)", text)
    if not match:
        raise BaselineError(f"{file}: row {line}, column 'grid': {text!r} is not like "
                            "'in=5..10;out=5..10' (exponents of two)")
    a, b, c, d = map(int, match.groups())
    return range(a, b + 1), range(c, d + 1)


def read_perf_table(file: Path) -> list[PerfRow]:
    try:
        with open(file, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, restkey=EXTRA)
            records = [(reader.line_num, r) for r in reader]
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BaselineError(f"{file}: cannot read as CSV ({e})") from None
    missing = [c for c in PERF_COLUMNS if c not in header]
    if missing:
        raise BaselineError(f"{file}: missing column {missing[0]!r} (expected columns: "
                            f"{', '.join(PERF_COLUMNS)})")
    rows = []
    for line, r in records:
        fields = sum(v is not None for k, v in r.items() if k != EXTRA) + len(r.get(EXTRA, []))
        if fields != len(header):
            raise BaselineError(f"{file}: row {line} has {fields} fields, expected "
                                f"{len(header)} (a comma in a value needs quotes)")
        for column, valid in (("metric", PERF_METRICS), ("unit", PERF_UNITS)):
            if r[column] not in valid:
                raise BaselineError(f"{file}: row {line}, column {column!r}: {r[column]!r} is "
                                    f"not one of {', '.join(valid)}")
        if r["unit"] == "none":
            value = float("nan")  # a table the source left empty: kept as a record of that
        else:
            try:
                value = float(r["value"])
            except ValueError:
                value = float("nan")
            if not math.isfinite(value) or value <= 0:
                raise BaselineError(f"{file}: row {line}, column 'value': {r['value']!r} is "
                                    "not a positive number")
        rows.append(PerfRow(
            file.stem, line, r["source"], r["table"], r["model"], r["hardware"], r["device"],
            r["dtype"], _int(file, line, "batch", r["batch"]),
            _int(file, line, "input_len", r["input_len"], optional=True),
            _int(file, line, "output_len", r["output_len"], optional=True),
            _grid(file, line, r["grid"]), r["metric"], value, r["unit"], r["note"]))
    return rows


def read_ours(file: Path) -> OursBaseline:
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BaselineError(f"{file}: not a readable JSON baseline ({e})") from None
    for key in ("format", "name", "saved", "run", "cases"):
        if key not in data:
            raise BaselineError(f"{file}: missing field {key!r}")
    if data["format"] > OURS_FORMAT:
        raise BaselineError(f"{file}: baseline format {data['format']} is newer than this "
                            f"llmgate reads ({OURS_FORMAT})")
    return OursBaseline(data["name"], file, data["saved"], data["run"],
                        {c["case"]: c for c in data["cases"]})


def perf_tables(root: Path = BASELINES_DIR) -> list[PerfRow]:
    return [row for file in sorted((root / "perf").glob("*.csv"))
            for row in read_perf_table(file)]


def ours_baselines(root: Path = BASELINES_DIR, suite: str = "perf") -> dict[str, OursBaseline]:
    return {file.stem: read_ours(file) for file in sorted((root / suite / "ours").glob("*.json"))}


def save_ours(run_dir: Path, name: str, suite: str, root: Path = BASELINES_DIR,
              force: bool = False) -> Path:
    """Store the records of `suite` in a run of ours (samples included) as baseline `name`."""
    from harness.results import latest_rows, load_records

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise BaselineError(f"baseline name {name!r}: use letters, digits, '.', '_' and '-'")
    rows = [r for r in latest_rows(load_records(run_dir))
            if r["suite"] == suite and r.get("outcome") == "passed"]
    if not rows:
        raise BaselineError(f"{run_dir}: no passed {suite} records to save")
    out = root / suite / "ours" / f"{name}.json"
    if out.exists() and not force:
        raise BaselineError(f"{out}: baseline {name!r} exists; choose another name or --force")
    run_json = run_dir / "run.json"
    run = json.loads(run_json.read_text()) if run_json.exists() else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"format": OURS_FORMAT, "name": name,
                               "saved": time.strftime("%Y-%m-%dT%H:%M:%S"), "run": run,
                               "cases": rows}, indent=1, default=str))
    return out

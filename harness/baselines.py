"""Stored baselines: the source documents' tables and runs of ours saved as baselines.

`baselines/{perf,accuracy}/*.csv` hold one file per table of the source documents, one figure
per row with its provenance (see `baselines/README.md`). `baselines/{perf,accuracy}/ours/*.json`
hold runs of ours saved by `llmgate baseline save`: perf with every sample, accuracy with every
question's answer, both with the machine, the library versions and the commit. Every malformed
file fails with one line naming the file, the row and the column.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from harness import jsonl

# The `baselines` package: the repository's directory, or its copy in an installed llmgate.
BASELINES_DIR = Path(str(resources.files("baselines")))
PERF_COLUMNS = ("source", "table", "model", "hardware", "device", "dtype", "batch", "input_len",
                "output_len", "grid", "metric", "value", "unit", "note")
PERF_METRICS = ("first_token", "next_token", "e2e_throughput", "max_batch", "none")
PERF_UNITS = ("ms", "s", "tokens/s", "batch", "ambiguous", "none")
ACCURACY_COLUMNS = ("source", "table", "model", "task", "category", "hardware", "device",
                    "dtype", "role", "score", "note")
ACCURACY_ROLES = ("reference", "port", "none")
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
    batch: int | None  # None only in a row of a table the source left empty
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


def _read_csv(file: Path, columns: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, row) of a CSV that must have `columns`; every row must have every field."""
    try:
        with open(file, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, restkey=EXTRA)
            records = [(reader.line_num, r) for r in reader]
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BaselineError(f"{file}: cannot read as CSV ({e})") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise BaselineError(f"{file}: missing column {missing[0]!r} (expected columns: "
                            f"{', '.join(columns)})")
    for line, r in records:
        fields = sum(v is not None for k, v in r.items() if k != EXTRA) + len(r.get(EXTRA, []))
        if fields != len(header):
            raise BaselineError(f"{file}: row {line} has {fields} fields, expected "
                                f"{len(header)} (a comma in a value needs quotes)")
    return records


def _choice(file: Path, line: int, r: dict, column: str, valid: tuple[str, ...]) -> str:
    if r[column] not in valid:
        raise BaselineError(f"{file}: row {line}, column {column!r}: {r[column]!r} is not one "
                            f"of {', '.join(valid)}")
    return r[column]


def read_perf_table(file: Path) -> list[PerfRow]:
    rows = []
    for line, r in _read_csv(file, PERF_COLUMNS):
        _choice(file, line, r, "metric", PERF_METRICS)
        _choice(file, line, r, "unit", PERF_UNITS)
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
            r["dtype"], _int(file, line, "batch", r["batch"], optional=r["unit"] == "none"),
            _int(file, line, "input_len", r["input_len"], optional=True),
            _int(file, line, "output_len", r["output_len"], optional=True),
            _grid(file, line, r["grid"]), r["metric"], value, r["unit"], r["note"]))
    return rows


@dataclass(frozen=True)
class AccuracyRow:
    """One score of a source table: a task's category (or "overall") on one device."""

    name: str
    line: int
    source: str
    table: str
    model: str
    task: str
    category: str
    hardware: str
    device: str
    dtype: str
    role: str  # "reference" (what a port must keep: the GPU), "port", or "none" published
    score: float
    note: str


def read_accuracy_table(file: Path) -> list[AccuracyRow]:
    rows = []
    for line, r in _read_csv(file, ACCURACY_COLUMNS):
        role = _choice(file, line, r, "role", ACCURACY_ROLES)
        try:
            score = float(r["score"]) if role != "none" else float("nan")
        except ValueError:
            score = float("nan")
        if role != "none" and not 0 <= score <= 1:
            raise BaselineError(f"{file}: row {line}, column 'score': {r['score']!r} is not a "
                                "fraction between 0 and 1")
        rows.append(AccuracyRow(file.stem, line, r["source"], r["table"], r["model"], r["task"],
                                r["category"], r["hardware"], r["device"], r["dtype"], role,
                                score, r["note"]))
    return rows


def accuracy_tables(root: Path = BASELINES_DIR) -> list[AccuracyRow]:
    return [row for file in sorted((root / "accuracy").glob("*.csv"))
            for row in read_accuracy_table(file)]


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


# What a baseline keeps of each answer: the paired gates' inputs, the choices' log-probabilities
# (in choice order; "expected" names the gold one) included.
ANSWER_FIELDS = ("id", "subject", "category", "expected", "predicted", "correct", "logprobs",
                 "status")


def read_answers_file(path: Path) -> list[dict]:
    """The answers (or samples) of a run's answer file, the last one per id."""
    return list({r["id"]: r for r in jsonl.read(path)}.values())


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
    for row in rows:  # accuracy: every question's answer, from the run's answer files
        if row.get("answers_file"):
            path = run_dir / row["answers_file"]
            row["answers"] = [{k: a[k] for k in ANSWER_FIELDS if k in a}
                              for a in read_answers_file(path)]
            expected = (row["problems"] * row["samples"] if "problems" in row
                        else row.get("questions"))
            if len(row["answers"]) != expected:
                what = "samples" if "problems" in row else "questions"
                raise BaselineError(f"{path}: {len(row['answers'])} answers, but case "
                                    f"{row['case']} counted {expected} {what}; a baseline "
                                    "must hold every one (rerun the case with --resume)")
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

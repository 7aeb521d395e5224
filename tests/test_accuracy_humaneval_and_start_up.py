"""HumanEval's completions, pass@k and resumed problems; the accuracy suite's start-up errors; a
source table's gate on a slice."""

import shutil

import pytest

from harness.accuracy import humaneval
from harness.accuracy.datasets import SMOKE_ROOT
from harness.accuracy.files import load_humaneval
from harness.accuracy.gate import not_the_benchmark, table_gate
from harness.accuracy.mmlu_subjects import MMLU_TEST_COUNTS
from harness.accuracy.scoring import summarize
from harness.baselines import AccuracyRow
from tests.conftest import ROOT
from tests.test_accuracy_harness import answers

pytest_plugins = ["pytester"]


def test_completions_stop_at_the_standard_sequences():
    assert humaneval.truncate("    return x\n\ndef other():\n") == "    return x\n"
    assert humaneval.truncate("    return x\n# test\nprint(1)") == "    return x"
    assert humaneval.truncate("    return x") == "    return x"


def test_pass_at_k_uses_the_unbiased_estimator():
    rows = [{"task_id": "a", "correct": c} for c in (True, False, False, False)] + \
           [{"task_id": "b", "correct": c} for c in (True, True, False, False)]
    scores = humaneval.pass_at_k(rows, 4)
    assert scores == {"pass@1": pytest.approx((0.25 + 0.5) / 2)}


class FixedSandbox:
    isolation = "test"

    def run_many(self, programs, workers=None, progress=None):
        from types import SimpleNamespace

        return [SimpleNamespace(status="passed" if "GOOD-COMPLETION" in p else "failed",
                                detail="", isolation="test") for p in programs]


def test_humaneval_records_each_problem_and_resumes(tmp_path, monkeypatch):
    problems = load_humaneval()[:5]
    calls = []

    def fake_complete(runner, tokenizer, prompts, max_new_tokens, sampling, task=None):
        calls.append(len(prompts))
        return [("    return 'GOOD-COMPLETION'\n" if i % 2 == 0 else "    return None\n",
                 "stop_sequence", 0) for i in range(len(prompts))]

    monkeypatch.setattr(humaneval, "complete", fake_complete)
    path = tmp_path / "samples.jsonl"
    rows = humaneval.evaluate(None, None, problems, FixedSandbox(), path, 2, 16, 1, 0.0)
    assert [r["task_id"] for r in rows] == [p.task_id for p in problems]
    assert [r["correct"] for r in rows] == [True, False, True, False, True]
    assert calls == [2, 2, 1]
    again = humaneval.evaluate(None, None, problems, FixedSandbox(), path, 2, 16, 1, 0.0)
    assert calls == [2, 2, 1] and again == rows  # nothing regenerated
    program = humaneval.program(problems[0], "    return True\n")
    assert program.startswith(problems[0].prompt) and program.endswith(
        f"check({problems[0].entry_point})\n")


def usage_error(result, message):
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_an_unknown_accuracy_baseline_is_refused_at_start_up_with_the_stored_names(suites):
    collect = ("--collect-only", "copied_suites/accuracy")
    usage_error(suites.runpytest(*collect, "--accuracy-baseline", "nosuch"),
                "--accuracy-baseline 'nosuch' is unknown; stored in */accuracy: "
                "000_falcon-7b_mmlu, 001_bloom-7b1_ceval, *transformers-smollm2-fp32*")
    known = suites.runpytest(*collect, "--accuracy-baseline",
                             "transformers-smollm2-fp32,001_bloom-7b1_ceval")
    assert known.ret == pytest.ExitCode.OK


def test_a_bad_dataset_is_a_usage_error_before_any_model_loads(suites, tmp_path):
    collect = ("--collect-only", "copied_suites/accuracy")
    root = tmp_path / "data"
    shutil.copytree(SMOKE_ROOT, root)
    csv_file = root / "ceval-exam" / "val" / "computer_network_val.csv"
    csv_file.write_text(csv_file.read_text().replace(",B\n", ",E\n", 1))
    usage_error(suites.runpytest(*collect, "--ceval-path", str(root)),
                f"{csv_file}: row *, column answer: 'E'; expected one of A, B, C, D")
    shutil.rmtree(root / "data" / "test")
    usage_error(suites.runpytest(*collect, "--task", "mmlu", "--mmlu-path", str(root)),
                f"{root / 'data' / 'test'}: no such directory; expected MMLU's test split")
    problems = tmp_path / "problems.jsonl"
    problems.write_text('{"task_id": "HumanEval/0"}\n')
    usage_error(suites.runpytest(*collect, "--task", "humaneval", "--humaneval-path",
                                 str(problems)), f"{problems}: line 1: no field 'prompt'")
    # a task left out is not read: the broken C-Eval copy does not stop a HumanEval-only run
    assert suites.runpytest(*collect, "--task", "humaneval", "--ceval-path",
                            str(root)).ret == pytest.ExitCode.OK


def test_a_source_table_does_not_gate_a_slice_or_the_smoke_set():
    summary = summarize(answers(400, 0.25))
    rows = [AccuracyRow("t", 2, "s", "T", "m", "mmlu", "overall", "cuda", "GPU", "fp16",
                        "reference", 0.70, "")]
    why = not_the_benchmark("mmlu", {"abstract_algebra": 2}, MMLU_TEST_COUNTS, smoke=False)
    assert why == ("not gated: 2 of 14,042 questions (a slice); the table measured the full "
                   "MMLU test split")
    failures, results = table_gate("mmlu", summary, rows, 0.99, not_gated=why)
    assert failures == [] and results[0]["gated"] is False and results[0]["not_gated"] == why
    assert results[0]["reference"] == 0.70  # reported beside ours
    assert results[0]["candidate"] == summary["overall"]["accuracy"]
    failures, results = table_gate("mmlu", summary, rows, 0.99)
    assert failures and results[0]["gated"] is True  # the full set is gated


def test_only_the_full_official_set_is_the_benchmark():
    full = dict(MMLU_TEST_COUNTS)
    assert not_the_benchmark("mmlu", full, full, smoke=False) == ""
    del full["anatomy"]
    assert not_the_benchmark("mmlu", full, full, smoke=False).startswith(
        "not gated: 13,907 questions, not the full set (anatomy: missing (135 questions "
        "expected)); the table measured the full MMLU test split")
    ceval = {"STEM": 430, "Social Science": 275, "Humanities": 257, "Other": 384}
    assert not_the_benchmark("ceval", ceval, ceval, smoke=False) == ""
    assert not_the_benchmark("ceval", {"STEM": 15}, {"STEM": 15}, smoke=True) == (
        "not gated: 15 questions of the shipped smoke set; the table measured the full C-Eval "
        "val split (1,346 questions)")
    humaneval = {"HumanEval": 164}
    assert not_the_benchmark("humaneval", humaneval, humaneval, smoke=False) == ""
    assert not_the_benchmark("humaneval", {"HumanEval": 20}, humaneval, smoke=False) == (
        "not gated: 20 of 164 problems (a slice); the table measured all 164 HumanEval problems")


@pytest.mark.parametrize("named", [False, True])
def test_the_smoke_set_is_reported_beside_a_table_and_not_gated(suites, tmp_path, named):
    baselines = tmp_path / "baselines"
    shutil.copytree(ROOT / "baselines", baselines)
    table = baselines / "accuracy" / "009_qwen-tiny_ceval.csv"
    table.write_text("source,table,model,task,category,hardware,device,dtype,role,score,note\n"
                     "x.txt,T,qwen-tiny,ceval,overall,cuda,GPU,fp16,reference,0.99,\n")
    named_args = ["--accuracy-baseline", table.stem] if named else []
    result = suites.runpytest("copied_suites/accuracy", "--task", "ceval", "--model",
                              "qwen-tiny", "--baselines-dir", str(baselines), "--results-dir",
                              str(tmp_path / "reports"), "--run-id", "r1", *named_args)
    assert result.ret == pytest.ExitCode.OK
    from harness.results import latest_rows, load_records

    (row,) = latest_rows(load_records(tmp_path / "reports" / "r1"))
    (comparison,) = row["comparisons"]
    assert comparison["reference"] == 0.99 and comparison["gated"] is False
    assert comparison["not_gated"] == ("not gated: 15 questions of the shipped smoke set; the "
                                       "table measured the full C-Eval val split (1,346 "
                                       "questions)")
    report = (tmp_path / "reports" / "r1" / "index.html").read_text()
    assert comparison["not_gated"] in report  # the report's verdict cell, not "pass"

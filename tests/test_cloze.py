"""MMLU and C-Eval in cloze form: each choice's text scored as a continuation (acc, acc_norm)."""

import json
from functools import cache

import pytest
import torch

from harness.accuracy import scoring
from harness.accuracy.datasets import SMOKE_ROOT, Question
from harness.accuracy.likelihood import MIN_QUESTIONS
from harness.accuracy.prompts import CEVAL_CLOZE, MMLU, MMLU_CLOZE
from harness.accuracy.scoring import continuation_logprobs, score_subject
from harness.ports.engine import PortedRunner
from harness.reference_runner import ReferenceRunner
from tests.conftest import tiny_checkpoint

pytest_plugins = ["pytester"]


@cache
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint("smollm2-135m"))


def question(i=0, answer="B"):
    return Question(f"abstract_algebra/test/{i}", "abstract_algebra", "STEM",
                    f" What is {i} + {i}? ", (str(2 * i), "007", "0.50", "none of these"), answer)


def test_the_cloze_prompt_is_lm_evaluation_harness_mmlu_continuation():
    text = MMLU_CLOZE.prefix("abstract algebra", [question(1, "A")]) + MMLU_CLOZE.context(
        question(3))
    assert text == ("The following are questions (with answers) about abstract algebra.\n\n"
                    "Question: What is 1 + 1?\nAnswer: 2\n\n"
                    "Question: What is 3 + 3?\nAnswer:")
    assert MMLU_CLOZE.continuations(question(3)) == [" 6", " 007", " 0.50", " none of these"]
    assert CEVAL_CLOZE.continuations(question(3))[0] == "6"


def test_both_forms_are_versioned_and_hashed_apart():
    assert MMLU_CLOZE.prompt_hash != MMLU.prompt_hash
    assert (MMLU.form, MMLU_CLOZE.form, MMLU_CLOZE.dataset) == ("letter", "cloze", "mmlu")
    # the letter form's hash is what the shipped baselines were saved under
    shipped = json.loads((scoring.Path(__file__).parent.parent / "baselines" / "accuracy" /
                          "ours" / "transformers-smollm2-fp32.json").read_text())
    assert MMLU.prompt_hash in {c["prompt_hash"] for c in shipped["cases"]}


def direct_logprob(model, ids: list[int], start: int) -> float:
    """Sum of log p(ids[t] | ids[:t]) for t >= start, from one whole forward."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    return sum(logprobs[t - 1, ids[t]].item() for t in range(start, len(ids)))


@pytest.mark.parametrize("family", ["qwen-tiny", "bloom-tiny"])
def test_continuation_logprobs_equal_one_whole_forward_per_row(family):
    tok = tokenizer()
    reference, engine = ReferenceRunner(tiny_checkpoint(family)), PortedRunner(
        tiny_checkpoint(family))
    context = "The following are questions (with answers).\n\nQuestion: What is 2 + 2?\nAnswer:"
    choices = [" 4", " four, as everyone knows", " 22", " fish"]
    ctx = tok(context).input_ids
    expected = [direct_logprob(reference.model, tok(context + c).input_ids, len(ctx))
                for c in choices]
    for runner in (reference, engine):
        got, truncated = continuation_logprobs(runner, tok, context, choices, 512)
        assert got == pytest.approx(expected, abs=1e-4) and not truncated
    # a cut context keeps its end: the same as scoring the last tokens alone
    got, truncated = continuation_logprobs(engine, tok, context, choices, len(ctx) + 3)
    longest = max(len(tok(context + c).input_ids) for c in choices)
    cut = longest - (len(ctx) + 3)
    assert truncated and got[0] == pytest.approx(direct_logprob(
        reference.model, tok(context + choices[0]).input_ids[cut:], len(ctx) - cut), abs=1e-4)


def test_a_context_ending_in_spaces_moves_them_into_the_continuation():
    """As lm-evaluation-harness's _encode_pair: "Answer: " + "4" is "Answer:" + " 4"."""
    tok, runner = tokenizer(), ReferenceRunner(tiny_checkpoint("qwen-tiny"))
    spaced, _ = continuation_logprobs(runner, tok, "Question: 2+2?\nAnswer: ", ["4", "5"], 512)
    plain, _ = continuation_logprobs(runner, tok, "Question: 2+2?\nAnswer:", [" 4", " 5"], 512)
    assert spaced == pytest.approx(plain, abs=1e-6)


def test_no_room_for_the_context_is_an_error():
    tok, runner = tokenizer(), ReferenceRunner(tiny_checkpoint("qwen-tiny"))
    with pytest.raises(ValueError, match="leaves no room for its context in 4 positions"):
        continuation_logprobs(runner, tok, "Question: 2+2?\nAnswer:", [" four plus zero"], 4)


def test_acc_takes_the_highest_sum_and_acc_norm_the_highest_per_character(monkeypatch, tmp_path):
    q = Question("s/test/0", "s", "STEM", "Pick", ("a", "bbbbbbbbbb", "c", "d"), "B")
    monkeypatch.setattr(scoring, "continuation_logprobs",
                        lambda *args: ([-3.0, -5.0, -9.0, -9.0], False))
    (answer,) = score_subject(None, tokenizer(), MMLU_CLOZE, "s", [q], [], 8, 512,
                              tmp_path / "a.jsonl", {})
    assert (answer["predicted"], answer["correct"]) == ("A", False)
    assert (answer["predicted_norm"], answer["correct_norm"]) == ("B", True)
    summary = scoring.summarize([answer])["overall"]
    assert (summary["accuracy"], summary["accuracy_norm"]) == (0.0, 1.0)


def test_the_suite_runs_cloze_cases_and_gates_them_on_likelihood(suites):
    """An engine identical to the reference in cloze form, on a few questions: measured
    (choice KL ~0), and failed all the same, because in cloze form the bounds need more
    questions than that to tell a regression from noise."""
    from harness.baselines import save_ours

    bl = suites.path / "bl"
    (bl / "accuracy").mkdir(parents=True)
    args = ("copied_suites/accuracy", "--model", "alpaca2-tiny", "--task", "mmlu-cloze",
            f"--mmlu-path={SMOKE_ROOT}", "--questions-per-subject", "3",
            f"--baselines-dir={bl}")  # one argument each: pytest finds its rootdir in paths
    suites.runpytest(*args, "--accuracy-runner", "reference", "--accuracy-baseline", "none",
                     "--run-id", "ref").assert_outcomes(passed=1)
    save_ours(suites.path / "reports" / "ref", "ref", "accuracy", bl)
    result = suites.runpytest(*args, "--accuracy-baseline", "ref", "--run-id", "engine")
    result.assert_outcomes(failed=1)
    (row,) = [json.loads(line) for line in
              (suites.path / "reports" / "engine" / "records-main.jsonl").read_text()
              .splitlines()]
    assert row["case"].startswith("mmlu-cloze-alpaca2-tiny-cpu-fp32")
    assert row["form"] == "cloze" and 0 <= row["accuracy_norm"] <= 1
    assert row["prompt_hash"] == MMLU_CLOZE.prompt_hash
    (likelihood,) = row["likelihood"]
    assert likelihood["choice_kl"] < 1e-6 and not likelihood["passed"]
    assert likelihood["questions"] < MIN_QUESTIONS["cloze"]
    assert f"fewer than the {MIN_QUESTIONS['cloze']} the cloze form needs" in likelihood["rule"]
    result.stdout.fnmatch_lines([f"*fewer than the {MIN_QUESTIONS['cloze']} the cloze form "
                                 "needs*"])
    answers = (suites.path / "reports" / "engine" / row["answers_file"]).read_text()
    assert '"predicted_norm"' in answers


def test_cloze_on_a_served_port_is_a_start_up_error(suites):
    result = suites.runpytest("copied_suites/accuracy", "--model", "alpaca2-tiny", "--task",
                              "mmlu-cloze", "--port", "openai:http://127.0.0.1:9/v1",
                              "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--task mmlu-cloze: a served port (openai:http://127.0.0.1:9"
                                 "/v1) gives no log-probability of each continuation token*"])

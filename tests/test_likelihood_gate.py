"""The paired likelihood gate on answers we write: an identical candidate passes, a planted
degradation that McNemar cannot see fails it, and what cannot be measured fails."""

import math
import random

import pytest

from harness.accuracy.gate import paired_gate
from harness.accuracy.likelihood import GOLD_MARGIN, KL_LIMIT, likelihood_gate, per_question


def answers(n: int, seed: int = 0, harm: float = 0.0, noise: float = 0.0,
            flatten: float = 0.0) -> list[dict]:
    """n questions with choice log-probabilities; `harm` lowers the gold choice's logit,
    `noise` adds random logit noise, `flatten` shrinks every logit towards uniform (as a
    dropped layer or heavy weight noise did to smollm2-135m), which keeps every argmax."""
    rng, rows = random.Random(seed), []
    for i in range(n):
        base = random.Random(i)
        logits = [base.gauss(0, 2) for _ in range(4)]
        gold = max(range(4), key=lambda j: logits[j]) if i % 3 else base.randrange(4)
        logits = [(v - harm * (j == gold)) * (1 - flatten) + rng.gauss(0, noise)
                  for j, v in enumerate(logits)]
        predicted = max(range(4), key=lambda j: logits[j])
        rows.append({"id": f"q/{i}", "category": "STEM", "expected": "ABCD"[gold],
                     "predicted": "ABCD"[predicted], "correct": predicted == gold,
                     "logprobs": logits})
    return rows


def pairs(candidate, baseline):
    return list(zip(candidate, baseline))


def test_an_identical_candidate_passes_with_zero_change():
    base = answers(100)
    failures, result = likelihood_gate("mmlu", pairs(base, base), "ref")
    assert failures == [] and result["passed"]
    assert result["gold_logprob_diff"] == 0 and result["choice_kl"] == 0
    assert result["wilcoxon_p"] == 1.0 and result["questions"] == 100


def test_a_flattened_model_fails_the_likelihood_gate_and_passes_mcnemar():
    base, worse = answers(114), answers(114, flatten=0.3)
    mcnemar, results = paired_gate("mmlu", worse, base, "ref", 0.99)
    assert mcnemar == [] and results[0]["flipped"] == []  # right/wrong cannot see it
    failures, result = likelihood_gate("mmlu", pairs(worse, base), "ref")
    assert not result["passed"]
    assert failures == [f"mmlu likelihood vs baseline ref (114 questions): mean choice KL "
                        f"{result['choice_kl']:.4f} nats, 95% upper bound "
                        f"{result['choice_kl_high']:.4f} > {KL_LIMIT:g}"]


def test_a_lower_gold_log_probability_fails_by_its_bound():
    base, worse = answers(114), answers(114, harm=1.0)
    failures, result = likelihood_gate("mmlu", pairs(worse, base), "ref")
    assert failures[0].startswith("mmlu likelihood vs baseline ref (114 questions): mean "
                                  "gold-choice log-probability change -")
    assert f"< -{GOLD_MARGIN:g}" in failures[0] and "Wilcoxon p=" in failures[0]


def test_noise_that_keeps_the_mean_fails_on_the_choice_kl():
    base, noisy = answers(114), answers(114, noise=0.5)
    failures, result = likelihood_gate("mmlu", pairs(noisy, base), "ref")
    assert any("95% upper bound" in f and f"> {KL_LIMIT:g}" in f for f in failures)
    assert result["choice_kl_high"] > KL_LIMIT


def test_a_tiny_harmless_change_passes():
    base = answers(114)
    close = [{**a, "logprobs": [v + random.Random(i).gauss(0, 1e-3) for v in a["logprobs"]]}
             for i, a in enumerate(base)]
    failures, result = likelihood_gate("mmlu", pairs(close, base), "ref")
    assert failures == [] and abs(result["gold_logprob_diff"]) < 1e-3


def test_unmeasurable_questions_are_left_out_and_none_left_fails():
    base = answers(10)
    served = [{**a, "logprobs": [a["logprobs"][0], -math.inf, -math.inf, -math.inf]}
              for a in base]
    assert per_question(served[0], base[0]) is None
    failures, result = likelihood_gate("mmlu", pairs(served, base), "ref")
    assert result["unmeasured"] == 10 and not result["passed"]
    assert failures == ["mmlu likelihood vs baseline ref (0 questions): fewer than 2 questions "
                        "with every choice's log-probability on both sides (10 left out): "
                        "nothing measured"]


def test_fewer_questions_than_the_forms_minimum_fail_saying_so():
    base = answers(30)
    failures, result = likelihood_gate("mmlu-cloze", pairs(base, base), "ref", min_questions=40)
    assert not result["passed"] and result["min_questions"] == 40
    assert failures == ["mmlu-cloze likelihood vs baseline ref (30 questions): 30 questions "
                        "are fewer than the 40 the cloze form needs: below that, runs that "
                        "must pass fail the bounds too, so this gate cannot tell a regression "
                        "from noise (gate more questions)"]
    assert likelihood_gate("mmlu-cloze", pairs(base, base), "ref", min_questions=30)[0] == []


def test_a_baseline_saved_without_log_probabilities_is_reported_not_gated():
    base = [{k: v for k, v in a.items() if k != "logprobs"} for a in answers(5)]
    failures, result = likelihood_gate("mmlu", pairs(answers(5), base), "old")
    assert failures == [] and result["gated"] is False
    assert "keeps no choice log-probabilities" in result["not_gated"]


@pytest.mark.parametrize("gold", ["A", "D"])
def test_per_question_values(gold):
    base = {"expected": gold, "logprobs": [-1.0, -2.0, -3.0, -4.0]}
    shifted = {"expected": gold, "logprobs": [v - 5 for v in base["logprobs"]]}
    d, kl = per_question(shifted, base)  # a constant shift normalises away
    assert abs(d) < 1e-12 and abs(kl) < 1e-12


# -- in the suite: smollm2-135m, a planted degradation against the reference ----------------

pytest_plugins = ["pytester"]


def test_the_suite_fails_planted_noise_on_likelihood_where_mcnemar_passes(suites,
                                                                          monkeypatch):
    """One question per subject (57): the reference saved as a baseline, then our engine
    (must pass) and the reference with 20% weight noise planted (must fail)."""
    import json
    from pathlib import Path

    from harness.baselines import save_ours

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    bl = suites.path / "bl"
    (bl / "accuracy").mkdir(parents=True)
    args = ("copied_suites/accuracy", "--model", "smollm2-135m", "--task", "mmlu",
            "--questions-per-subject", "1", "--baselines-dir", str(bl))
    suites.runpytest(*args, "--accuracy-runner", "reference", "--accuracy-baseline", "none",
                     "--run-id", "ref").assert_outcomes(passed=1)
    save_ours(suites.path / "reports" / "ref", "ref", "accuracy", bl)

    def run(run_id, *extra):
        result = suites.runpytest(*args, "--accuracy-baseline", "ref", "--run-id", run_id,
                                  *extra)
        path = suites.path / "reports" / run_id / "records-main.jsonl"
        (row,) = [json.loads(line) for line in path.read_text().splitlines()]
        return result, row

    engine, row = run("engine")
    engine.assert_outcomes(passed=1)
    assert row["likelihood"][0]["passed"] and row["likelihood"][0]["questions"] == 57

    noisy, row = run("noisy", "--port", "smollm2-135m=benchmarks.planted:noise20")
    noisy.assert_outcomes(failed=1)
    overall = next(c for c in row["comparisons"] if c["category"] == "overall")
    assert overall["passed"], "McNemar and the 99% rule were meant to miss it"
    assert not row["likelihood"][0]["passed"]
    assert row["reason"].startswith("mmlu likelihood vs baseline ref (57 questions): ")

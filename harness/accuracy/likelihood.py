"""The paired likelihood gate: did the candidate keep the baseline's belief in the right answer?

McNemar and the 99% rule see only right/wrong, and on a model near chance (or a slice of a
few hundred questions) neither can see a regression. Every multiple-choice answer of ours
also keeps each choice's log-probability, which carries far more. Per question, with both
runs' choice log-probabilities normalised over the choices (log-softmax over A..D):

  d   = candidate's log-probability of the gold choice - the baseline's
  KL  = KL(baseline's choice distribution || candidate's)

The unit is the question: questions are independent prompts, so their d and KL are
independent samples (not so the tokens of one prompt). The gate fails when

  - the one-sided 95% lower bound of the mean d (Student t) is below -GOLD_MARGIN: the
    candidate is not shown to hold the gold log-probability within the margin, or
  - the one-sided 95% upper bound of the mean KL is above KL_LIMIT, or
  - fewer questions were measured than MIN_QUESTIONS of the task's form: too few for the
    bounds to tell a regression from the spread of runs that must pass.

The Wilcoxon signed-rank p-value of d (one-sided: the candidate lower) is recorded beside
them. Both limits are set from runs that must pass (see the README's accuracy section): the
largest spread they show, with room. Questions where either run has a non-finite choice
log-probability (a served port's choice outside its top-K) cannot be normalised and are left
out, counted; with none left the gate fails, having measured nothing.
"""

from __future__ import annotations

import math

import torch

from harness.accuracy.prompts import TASKS
from harness.stats import mean_bounds, wilcoxon_lower_p_value

CONFIDENCE = 0.95
GOLD_MARGIN = 0.1  # nats, on the mean gold-choice log-probability
KL_LIMIT = 0.01  # nats, on the mean choice KL
# The fewest questions the gate judges, per form (benchmarks/planted_degradations.py, "fails
# up to": the largest n at which the bounds alone fail a run that must pass). Letter form: no
# run that must pass fails at any n from 10. Cloze form: a choice's log-likelihood sums over its
# tokens and the per-question KL has a heavy tail; w8a16 fails the KL bound up to 150 of the 285
# questions and bf16 the gold bound up to 40, while the mis-scaled int8 layer fails from 20 on.
MIN_QUESTIONS = {"letter": 2, "cloze": 250}


def _normalised(logprobs: list[float]) -> torch.Tensor:
    return torch.log_softmax(torch.tensor(logprobs, dtype=torch.float64), -1)


def per_question(candidate: dict, baseline: dict) -> tuple[float, float] | None:
    """(d, KL) of one question, or None where it cannot be normalised."""
    c, b = candidate.get("logprobs"), baseline.get("logprobs")
    if not c or not b or len(c) != len(b) or not all(map(math.isfinite, [*c, *b])):
        return None
    gold = ord(str(candidate["expected"])) - ord("A")
    if not 0 <= gold < len(c):
        return None
    lc, lb = _normalised(c), _normalised(b)
    return (lc[gold] - lb[gold]).item(), (lb.exp() * (lb - lc)).sum().clamp(min=0).item()


def likelihood_gate(task: str, pairs: list[tuple[dict, dict]], name: str,
                    gold_margin: float = GOLD_MARGIN, kl_limit: float = KL_LIMIT,
                    min_questions: int | None = None) -> tuple[list[str], dict]:
    """Failures and the result of the gate over (candidate, baseline) answer pairs.
    min_questions: fewer measured questions fail (default: the task's form's minimum)."""
    if min_questions is None:
        min_questions = MIN_QUESTIONS.get(TASKS[task].form, 2)
    if not any(b.get("logprobs") for _, b in pairs):
        return [], {"baseline": name, "category": "likelihood", "gated": False,
                    "passed": True, "not_gated": f"baseline {name} keeps no choice "
                                                 "log-probabilities (saved before they were)"}
    found = [per_question(c, b) for c, b in pairs]
    measured = [x for x in found if x is not None]
    d = mean_bounds([x[0] for x in measured], CONFIDENCE)
    kl = mean_bounds([x[1] for x in measured], CONFIDENCE)
    result = {"baseline": name, "category": "likelihood", "gated": True,
              "questions": len(measured), "unmeasured": len(found) - len(measured),
              "gold_logprob_diff": d["mean"], "gold_logprob_diff_low": d["low"],
              "choice_kl": kl["mean"], "choice_kl_high": kl["high"],
              "wilcoxon_p": wilcoxon_lower_p_value([x[0] for x in measured]),
              "gold_margin": gold_margin, "kl_limit": kl_limit}
    head = f"{task} likelihood vs baseline {name} ({len(measured)} questions)"
    failures = []
    result["min_questions"] = min_questions
    if len(measured) < 2:
        failures.append(f"{head}: fewer than 2 questions with every choice's log-probability "
                        f"on both sides ({result['unmeasured']} left out): nothing measured")
    elif len(measured) < min_questions:
        failures.append(f"{head}: {len(measured)} questions are fewer than the "
                        f"{min_questions} the {TASKS[task].form} form needs: below that, runs "
                        f"that must pass fail the bounds too, so this gate cannot tell a "
                        f"regression from noise (gate more questions)")
    else:
        if not d["low"] >= -gold_margin:
            failures.append(
                f"{head}: mean gold-choice log-probability change {d['mean']:+.4f} nats, "
                f"95% lower bound {d['low']:+.4f} < -{gold_margin:g} (Wilcoxon p="
                f"{result['wilcoxon_p']:.3g}): not shown within the margin")
        if not kl["high"] <= kl_limit:
            failures.append(f"{head}: mean choice KL {kl['mean']:.4f} nats, 95% upper bound "
                            f"{kl['high']:.4f} > {kl_limit:g}")
    result["passed"] = not failures
    result["rule"] = "; ".join(f.split(": ", 1)[1] for f in failures)
    return failures, result

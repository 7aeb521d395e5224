"""The accuracy gate: did the candidate keep the baseline's accuracy?

Against a baseline with every question's answer (a run of ours, e.g. the transformers
reference on the CPU in fp32), question by question:
  - the exact McNemar test on the discordant questions (one-sided: is the candidate worse?),
    overall at alpha 0.05 and per category at alpha / categories (Bonferroni), and
  - a tolerance: the candidate must reach `tolerance` (default 99%, the MLPerf rule) of the
    baseline's overall score;
the score difference comes with a confidence interval, and every flipped question is listed.
Against a source table (scores only), the candidate fails where even the top of its Wilson
interval is below `tolerance` x the table's score; a table measured the full official set, so
only a score over that set is gated against it, and any other (the smoke set, a slice) is
reported beside it with the reason. Both compare only like with like: the same questions (the
intersection of ids), and for runs of ours the same task version and prompt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from harness.accuracy.datasets import CEVAL_VAL_COUNTS, subject_count_problems
from harness.accuracy.mmlu_subjects import MMLU_TEST_COUNTS
from harness.baselines import AccuracyRow
from harness.stats import mcnemar_worse_p_value, paired_difference, proportion_interval
from harness.verdicts import Verdict, verdict

ALPHA = 0.05

# What the source tables measured, as counts per group: C-Eval per category, MMLU per subject,
# HumanEval per task-id prefix (an unknown problem set has another prefix or count).
FULL_SETS = {
    "ceval": ("the full C-Eval val split (1,346 questions)", CEVAL_VAL_COUNTS, "questions"),
    "mmlu": ("the full MMLU test split", MMLU_TEST_COUNTS, "questions"),
    "humaneval": ("all 164 HumanEval problems", {"HumanEval": 164}, "problems"),
}


@dataclass
class PairedResult:
    baseline: str
    category: str  # a category, or "overall"
    questions: int
    candidate: float
    reference: float
    lost: list[str] = field(default_factory=list)  # right -> wrong
    gained: list[str] = field(default_factory=list)  # wrong -> right
    flipped: list[dict] = field(default_factory=list)  # id, expected, both answers, text
    p_value: float = 1.0
    difference: float = 0.0
    low: float = 0.0
    high: float = 0.0
    passed: bool = True
    gated: bool = True  # a run of ours always gates: it asked the same questions
    rule: str = ""


def _pair(name: str, category: str, pairs: list[tuple[dict, dict]], alpha: float,
          tolerance: float | None) -> PairedResult:
    ours = [int(bool(c["correct"])) for c, _ in pairs]
    theirs = [int(bool(b["correct"])) for _, b in pairs]
    n = len(pairs)
    result = PairedResult(name, category, n, sum(ours) / n, sum(theirs) / n)
    result.lost = [c["id"] for c, b in pairs if b["correct"] and not c["correct"]]
    result.gained = [c["id"] for c, b in pairs if c["correct"] and not b["correct"]]
    result.flipped = [{"id": c["id"], "direction": "right->wrong" if b["correct"] else
                       "wrong->right", "expected": c.get("expected"),
                       "candidate": c.get("predicted"), "baseline": b.get("predicted"),
                       "question": c.get("question", "")}
                      for c, b in pairs if bool(c["correct"]) != bool(b["correct"])]
    result.p_value = mcnemar_worse_p_value(len(result.lost), len(result.gained))
    diff = paired_difference(ours, theirs)
    result.difference, result.low, result.high = diff["difference"], diff["low"], diff["high"]
    if result.p_value < alpha:
        result.passed, result.rule = False, f"McNemar one-sided p < {alpha:.3g}"
    elif tolerance is not None and result.candidate < tolerance * result.reference:
        result.passed, result.rule = False, f"below {tolerance:.0%} of the baseline"
    return result


def paired_gate(task: str, candidate: list[dict], baseline: list[dict], name: str,
                tolerance: float) -> tuple[list[str], list[dict]]:
    """Failures and per-category/overall results of a candidate against per-question answers."""
    by_id = {b["id"]: b for b in baseline}
    pairs = [(c, by_id[c["id"]]) for c in candidate if c["id"] in by_id]
    if not pairs:
        return [f"{task}: no question in common with baseline {name}"], []
    categories = sorted({c["category"] for c, _ in pairs})
    results = [_pair(name, "overall", pairs, ALPHA, tolerance)]
    results += [_pair(name, cat, [p for p in pairs if p[0]["category"] == cat],
                      ALPHA / len(categories), None) for cat in categories]
    for r in results[1:]:
        r.flipped = []  # listed once, in the overall result
    failures = [f"{task} {r.category}: {r.candidate:.4f} vs {r.reference:.4f} in baseline "
                f"{name} ({r.questions} questions, {len(r.lost)} right->wrong, "
                f"{len(r.gained)} wrong->right, McNemar p={r.p_value:.3g}): {r.rule}"
                for r in results if not r.passed]
    return failures, [asdict(r) for r in results]


def not_the_benchmark(task: str, scored: dict[str, int], available: dict[str, int],
                      smoke: bool) -> str:
    """Why a score must not be gated against a source table, or "" when it is over the set the
    table measured. `scored` and `available` count questions per group, as FULL_SETS does."""
    measured, full, unit = FULL_SETS[task]
    n, total = sum(scored.values()), sum(available.values())
    if smoke:
        found = f"{n:,} {unit} of the shipped smoke set"
    elif n < total:
        found = f"{n:,} of {total:,} {unit} (a slice)"
    elif problems := subject_count_problems(available, full):
        found = f"{n:,} {unit}, not the full set ({'; '.join(problems[:3])})"
    else:
        return ""
    return f"not gated: {found}; the table measured {measured}"


def table_gate(task: str, summary: dict, rows: list[AccuracyRow], tolerance: float,
               not_gated: str = "") -> tuple[list[str], list[dict]]:
    """The candidate's category and overall scores against a source table: rows of the
    reference (the GPU) gate, unless `not_gated` says why the score is not over the table's
    set; rows of other ports are reported next to ours."""
    failures, results = [], []
    for row in rows:
        ours = (summary["overall"] if row.category == "overall"
                else summary["categories"].get(row.category))
        if ours is None or not ours["total"]:
            continue
        low, high = proportion_interval(ours["correct"], ours["total"])
        why = not_gated or ("" if row.role == "reference" else "a port's figure, reported "
                                                                "beside ours")
        passed = bool(why) or high >= tolerance * row.score
        results.append({"baseline": f"{row.name}:{row.line}", "category": row.category,
                        "candidate": ours["accuracy"], "reference": row.score, "low": low,
                        "high": high, "questions": ours["total"], "role": row.role,
                        "device": row.device, "passed": passed, "gated": not why,
                        "not_gated": why})
        if not passed:
            failures.append(f"{task} {row.category}: {ours['accuracy']:.4f} (95% interval "
                            f"{low:.4f}..{high:.4f}, {ours['total']} questions) vs "
                            f"{row.score:.4f} on {row.device} in {row.name}: below "
                            f"{tolerance:.0%} of it")
    return failures, results


def accuracy_verdict(failures: list[str], tolerance: float, compared: int, **metrics) -> Verdict:
    rule = (f">= {tolerance:.0%} of the baseline, not significantly worse (McNemar) and, "
            "for multiple choice, the gold choice's log-probability held (likelihood gate)"
            if compared else "no comparable baseline (measured only)")
    return verdict(failures, tolerance, rule, baselines_compared=compared, gated=bool(compared),
                   **metrics)

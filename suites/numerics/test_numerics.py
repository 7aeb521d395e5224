"""Ported logits vs the transformers reference, step by step.

Teacher-forced: both runners get the same prompt and the same next tokens (likely tokens of
the fp32 reference that are never its greedy choice, so a port must read the token it is
fed), and every decode step is compared at the same position.
"""

import pytest

from harness.numerics.greedy import ReferenceGreedy, greedy_case
from harness.numerics.served import served_topk_case
from harness.numerics.teacher_forced import (
    forced_logits,
    pretrained_limits,
    reference_run,
    sequence_logits,
    teacher_forced_case,
)
from harness.verdicts import at_most, nan_max, verdict

pytestmark = pytest.mark.numerics


def test_teacher_forced(case, runner_pool, thresholds, record):
    """A served port: over its echoed prompt (harness/numerics/served.py)."""
    if runner_pool.is_served(case):
        ported = runner_pool.ported(case)
        record(**ported.describe())
        result, metrics = served_topk_case(case, ported, runner_pool.reference(case.model),
                                           runner_pool.tokenizer(case.model), thresholds)
    else:
        result, metrics = teacher_forced_case(case, runner_pool, thresholds)
    record(result, **metrics, thresholds_version=thresholds["version"])
    assert result.passed, f"{case}: {result.message()}"


def test_padding_invariance(case, runner_pool, thresholds, record):
    """Each row of a left-padded batch matches the same sequence run alone, both fed the fp32
    reference's teacher-forced tokens.

    fp32: directly, within the fp32 limit. Other dtypes: the padded row may be at most
    `padding_relative` times as far from the fp32 reference (its run of the padded batch) as
    the row run alone.
    """
    if runner_pool.is_served(case):
        pytest.skip(f"not run: a served port ({runner_pool.settings.port(case).name}) batches "
                    "requests itself; padding is not visible through its API")
    runner_pool.runnable(case)
    run = reference_run(runner_pool, case)
    ported = runner_pool.ported(case)
    batch_logits = forced_logits(ported, run)  # (steps + 1, B, V)
    ids, mask, tokens = run["ids"], run["mask"], list(run["tokens"])
    kind = "real" if pretrained_limits(case.model) else "tiny"
    abs_limit = thresholds["fp32"][f"padding_abs_diff_{kind}"]
    factor = thresholds["reduced"]["padding_relative"]
    diffs, ratios, failures = [], [], []
    for row in range(case.batch):
        pad = int((mask[row] == 0).sum())
        sequence, row_tokens = ids[row:row + 1, pad:], [t[row:row + 1] for t in tokens]
        padded = batch_logits[:, row]
        by_itself = sequence_logits(ported, sequence, row_tokens)
        diff = (padded - by_itself).abs().max().item()
        diffs.append(diff)
        if case.dtype == "fp32":
            if not at_most(diff, abs_limit):
                failures.append(f"row {row}: batch vs alone max |dlogit| {diff:.3g} > "
                                f"{abs_limit:g}")
            continue
        truth = run["logits"][:, row]
        padded_error = (padded - truth).abs().max().item()
        alone_error = (by_itself - truth).abs().max().item()
        ratios.append(padded_error / max(alone_error, 1e-12))
        if not at_most(padded_error, factor * alone_error + abs_limit):
            failures.append(f"row {row}: padded error {padded_error:.3g} > {factor} x alone "
                            f"{alone_error:.3g} + {abs_limit:g}")
    if case.dtype == "fp32":
        result = verdict(failures, abs_limit, f"batch vs alone max |dlogit| <= {abs_limit:g}",
                         max_abs_diff=nan_max(diffs))
    else:
        result = verdict(failures, factor, f"padded error <= {factor} x alone + {abs_limit:g}",
                         max_abs_diff=nan_max(diffs), padded_error_ratio=nan_max(ratios))
    record(result, thresholds_version=thresholds["version"])
    assert result.passed, f"{case}: {result.message()}"


def test_greedy_generation(case, runner_pool, thresholds, record):
    """Greedy tokens of the port equal transformers' `generate`, left padding included:
    through the port's prefill/decode, and through its own `generate` where that is another
    path (harness/numerics/greedy.py). A served port gets each row unpadded."""
    ported = runner_pool.ported(case)
    if runner_pool.is_served(case):
        record(**ported.describe())
    result, text = greedy_case(case, ported, ReferenceGreedy(runner_pool, case.model),
                               runner_pool.tokenizer(case.model), thresholds)
    record(result, text=text, thresholds_version=thresholds["version"])
    assert result.passed, f"{case}: {result.message()}"

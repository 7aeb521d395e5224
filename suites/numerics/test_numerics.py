"""Ported logits vs the transformers reference, step by step.

Teacher-forced: both runners get the same prompt and the same next tokens (likely tokens of
the fp32 reference that are never its greedy choice, so a port must read the token it is
fed), and every decode step is compared at the same position.
"""

import pytest
import torch

from harness.numerics.greedy import greedy_case
from harness.numerics.served import served_topk_case
from harness.numerics.teacher_forced import (
    make_prompt,
    pretrained_limits,
    sequence_logits,
    teacher_forced,
    teacher_forced_case,
)
from harness.verdicts import at_most, nan_max, verdict

pytestmark = pytest.mark.numerics


def served(runner) -> bool:
    return getattr(runner, "served", False)


def test_teacher_forced(case, runner_pool, thresholds, record):
    """A served port: over its echoed prompt (harness/numerics/served.py)."""
    ported = runner_pool.ported(case)
    if served(ported):
        record(**ported.describe())
        result, metrics = served_topk_case(case, ported, runner_pool.reference(case.model),
                                           runner_pool.tokenizer(case.model), thresholds)
    else:
        result, metrics = teacher_forced_case(case, runner_pool, thresholds)
    record(result, **metrics, thresholds_version=thresholds["version"])
    assert result.passed, f"{case}: {result.message()}"


def test_padding_invariance(case, runner_pool, thresholds, record):
    """Each row of a left-padded batch matches the same sequence run alone.

    fp32: directly, within the fp32 limit. bf16/fp16: the padded row may be at most
    `padding_relative` times as far from the fp32 reference as the row run alone.
    """
    ported = runner_pool.ported(case)
    if served(ported):
        pytest.skip(f"not run: a served port ({ported.spec.name}) batches requests itself; "
                    "padding is not visible through its API")
    ids, mask = make_prompt(case, runner_pool.config(case.model).vocab_size)
    batch_history, tokens = teacher_forced(ported, [], ids, mask, case.out)
    reference = runner_pool.reference(case.model) if case.dtype != "fp32" else None
    kind = "real" if pretrained_limits(case.model) else "tiny"
    abs_limit = thresholds["fp32"][f"padding_abs_diff_{kind}"]
    factor = thresholds["reduced"]["padding_relative"]
    diffs, ratios, failures = [], [], []
    for row in range(case.batch):
        pad = int((mask[row] == 0).sum())
        sequence, row_tokens = ids[row:row + 1, pad:], [t[row:row + 1] for t in tokens]
        padded = torch.stack([step[0][row] for step in batch_history])
        by_itself = sequence_logits(ported, sequence, row_tokens)
        diff = (padded - by_itself).abs().max().item()
        diffs.append(diff)
        if reference is None:
            if not at_most(diff, abs_limit):
                failures.append(f"row {row}: batch vs alone max |dlogit| {diff:.3g} > "
                                f"{abs_limit:g}")
            continue
        truth = sequence_logits(reference, sequence, row_tokens)
        padded_error = (padded - truth).abs().max().item()
        alone_error = (by_itself - truth).abs().max().item()
        ratios.append(padded_error / max(alone_error, 1e-12))
        if not at_most(padded_error, factor * alone_error + abs_limit):
            failures.append(f"row {row}: padded error {padded_error:.3g} > {factor} x alone "
                            f"{alone_error:.3g} + {abs_limit:g}")
    if reference is None:
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
    if served(ported):
        record(**ported.describe())
    result, text = greedy_case(case, ported, runner_pool.reference(case.model),
                               runner_pool.tokenizer(case.model), thresholds)
    record(result, text=text, thresholds_version=thresholds["version"])
    assert result.passed, f"{case}: {result.message()}"

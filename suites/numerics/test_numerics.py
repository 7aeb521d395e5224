"""Ported logits vs the transformers reference, step by step.

Teacher-forced: both runners get the same prompt and the same next tokens (the fp32
reference's greedy choices), so every decode step is compared at the same position.
"""

import pytest
import torch

from harness.numerics.served import limits, served_topk_case
from harness.numerics.teacher_forced import (
    make_prompt,
    pretrained_limits,
    sequence_logits,
    teacher_forced,
    teacher_forced_case,
)
from harness.prompts import prompt_ids
from harness.verdicts import at_most, first_lines, nan_max, verdict

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
    ids, mask = make_prompt(case, ported.config.vocab_size)
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
    """Greedy tokens of the port equal transformers' `generate`, left padding included.

    A served port gets each row unpadded; a 4-bit one must agree on the profile's leading
    tokens only (`greedy_min_leading`; -1: all)."""
    ported = runner_pool.ported(case)
    leading = case.out
    if served(ported):
        record(**ported.describe())
        wanted = limits(thresholds, case.dtype)["greedy_min_leading"]
        leading = case.out if wanted < 0 else min(int(wanted), case.out)
    reference = runner_pool.reference(case.model)
    tokenizer = runner_pool.tokenizer(case.model)
    pad_id = tokenizer.pad_token_id or 0
    ids = torch.tensor([prompt_ids(tokenizer, case.seqlen)] * 2)
    mask = torch.ones_like(ids)
    mask[1, : case.seqlen // 2] = 0  # second row: the prompt's tail, left-padded
    ids[1, : case.seqlen // 2] = pad_id
    generation = ported.generate(ids, mask, case.out)
    ours = generation.tokens
    theirs = reference.generate(ids, mask, case.out).tokens
    first_diff = [next((i for i, (a, b) in enumerate(zip(o, t)) if a != b),
                       None if len(o) >= len(t) else len(o)) for o, t in zip(ours, theirs)]
    failures = first_lines([f"step {step} row {row}: non-finite logits"
                            for step, row in generation.nonfinite])
    failures += [f"row {row}: first differing new token at {i}"
                 + (f" (the port stopped: {generation.finish_reasons[row]})"
                    if i == len(ours[row]) else "")
                 for row, i in enumerate(first_diff) if i is not None and i < leading]
    rule = "identical tokens" if leading == case.out else f"first {leading} tokens identical"
    result = verdict(failures, leading, rule, first_differing_token=first_diff,
                     tokens_compared=sum(len(t) for t in theirs),
                     tokens_equal=sum(a == b for o, t in zip(ours, theirs) for a, b in zip(o, t)))
    record(result, text=tokenizer.decode([t for t in ours[0] if t >= 0]))
    assert result.passed, f"{case}: {result.message()}"

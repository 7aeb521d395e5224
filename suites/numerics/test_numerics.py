"""Ported logits vs the transformers reference, step by step.

Teacher-forced: both runners get the same prompt and the same next tokens (the fp32
reference's greedy choices), so every decode step is compared at the same position.
"""

import pytest
import torch

from harness.numerics import (
    fp32_verdict,
    make_prompt,
    reduced_verdict,
    sequence_logits,
    stats_against_reference,
    teacher_forced,
)

pytestmark = pytest.mark.numerics

PROMPT_TEXT = (
    "The history of computing is a story of ever smaller machines doing ever larger jobs. "
    "Early computers filled whole rooms, consumed enormous amounts of power and needed teams "
    "of engineers to keep them running. Today a phone in a pocket outperforms them by many "
    "orders of magnitude, and the same ideas that once required a laboratory now run on a "
    "laptop. Language models follow the same path: what first ran on large clusters is being "
    "ported to new accelerators, and each port must prove that it still computes the same "
    "function as the original implementation, token by token, before anyone relies on it."
)


def test_teacher_forced(case, runner_pool, llmgate, thresholds, record):
    ported = runner_pool.ported(case)
    reference = runner_pool.reference(case.model)
    ids, mask = make_prompt(case, ported.model.config.vocab_size)
    pretrained = llmgate.has_pretrained(case.model)
    if case.dtype == "fp32":
        history, _ = teacher_forced(reference, [ported], ids, mask, llmgate.decode_steps)
        ours = stats_against_reference(history, 1, thresholds)
        verdict = fp32_verdict(ours, thresholds, pretrained)
        theirs = {}
    else:
        reference_in_dtype = runner_pool.reference(case.model, case.dtype)
        history, _ = teacher_forced(reference, [ported, reference_in_dtype], ids, mask,
                                    llmgate.decode_steps)
        ours = stats_against_reference(history, 1, thresholds)
        hf = stats_against_reference(history, 2, thresholds)
        verdict = reduced_verdict(ours, hf, thresholds, pretrained)
        theirs = {f"reference_{k}": v for k, v in hf.as_dict().items() if k != "positions"}
    record(case, verdict.passed, **ours.as_dict(), **theirs, limit=verdict.limit,
           failures="; ".join(verdict.failures), thresholds_version=thresholds["version"])
    assert verdict.passed, f"{case}: " + "; ".join(verdict.failures)


def test_padding_invariance(case, runner_pool, llmgate, thresholds, record):
    """Each row of a left-padded batch matches the same sequence run alone.

    fp32: directly, within the fp32 limit. bf16/fp16: the padded row may be at most
    `padding_relative` times as far from the fp32 reference as the row run alone.
    """
    ported = runner_pool.ported(case)
    ids, mask = make_prompt(case, ported.model.config.vocab_size)
    steps = min(llmgate.decode_steps, 4)
    batch_history, tokens = teacher_forced(ported, [], ids, mask, steps)
    reference = runner_pool.reference(case.model) if case.dtype != "fp32" else None
    kind = "real" if llmgate.has_pretrained(case.model) else "tiny"
    abs_limit = thresholds["fp32"][f"padding_abs_diff_{kind}"]
    factor = thresholds["reduced"]["padding_relative"]
    worst_diff, worst_ratio, failures = 0.0, 0.0, []
    for row in range(case.batch):
        pad = int((mask[row] == 0).sum())
        sequence, row_tokens = ids[row:row + 1, pad:], [t[row:row + 1] for t in tokens]
        padded = torch.stack([step[0][row] for step in batch_history])
        by_itself = sequence_logits(ported, sequence, row_tokens)
        diff = (padded - by_itself).abs().max().item()
        worst_diff = max(worst_diff, diff)
        if reference is None:
            if diff > abs_limit:
                failures.append(f"row {row}: batch vs alone max |dlogit| {diff:.3g} > "
                                f"{abs_limit:g}")
            continue
        truth = sequence_logits(reference, sequence, row_tokens)
        padded_error = (padded - truth).abs().max().item()
        alone_error = (by_itself - truth).abs().max().item()
        worst_ratio = max(worst_ratio, padded_error / max(alone_error, 1e-12))
        if padded_error > factor * alone_error + abs_limit:
            failures.append(f"row {row}: padded error {padded_error:.3g} > {factor} x alone "
                            f"{alone_error:.3g} + {abs_limit:g}")
    record(case, not failures, max_abs_diff=worst_diff, padded_error_ratio=worst_ratio,
           limit=abs_limit if reference is None else factor, failures="; ".join(failures),
           thresholds_version=thresholds["version"])
    assert not failures, f"{case}: " + "; ".join(failures)


def test_greedy_generation(case, runner_pool, llmgate, record):
    """Greedy tokens of the engine equal transformers' `generate`, left padding included."""
    from transformers import AutoTokenizer

    from models.engine import generate

    ported = runner_pool.ported(case)
    reference = runner_pool.reference(case.model)
    tokenizer = AutoTokenizer.from_pretrained(llmgate.checkpoint(case.model))
    full = tokenizer(PROMPT_TEXT, return_tensors="pt").input_ids[:, : case.seqlen]
    assert full.shape[1] == case.seqlen, f"prompt text has fewer than {case.seqlen} tokens"
    ids = full.repeat(2, 1)
    mask = torch.ones_like(ids)
    mask[1, : case.seqlen // 2] = 0  # second row: the prompt's tail, left-padded
    ids[1, : case.seqlen // 2] = tokenizer.pad_token_id or 0
    ours = generate(ported.engine, ids, mask, case.out, ignore_eos=True).tokens
    theirs = reference.model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=case.out, min_new_tokens=case.out,
        do_sample=False, pad_token_id=tokenizer.pad_token_id or 0)[:, case.seqlen:].tolist()
    agree = [sum(a == b for a, b in zip(o, t)) for o, t in zip(ours, theirs)]
    first_diff = [next((i for i, (a, b) in enumerate(zip(o, t)) if a != b), None)
                  for o, t in zip(ours, theirs)]
    passed = ours == theirs
    record(case, passed, tokens_compared=sum(len(t) for t in theirs),
           tokens_equal=sum(agree), first_difference=str(first_diff),
           text=tokenizer.decode(ours[0]))
    assert passed, f"{case}: first differing new token per row {first_diff}"

"""Numerics of a served port: its echoed top-K prompt log-probabilities against the reference.

Echoing a prompt is teacher forcing over the prompt: every position's distribution is
computed from the true tokens before it. The prompt is real text sent as text, so the
server's own tokenizer runs; its echoed tokens are compared with the reference tokenizer's
first (a mismatch would misalign everything after it). The comparison itself is
`harness.ports.topk`: per-position max |d logprob|, top-1 agreement and KL bounds, with a
shifted echo named as such. Limits are the case's profile (its dtype token), `[served_*]`
in thresholds.toml.
"""

from __future__ import annotations

import pytest
import torch

from harness.cases import Case
from harness.ports.openai import EndpointUnsupported
from harness.ports.topk import TopK, align, kl_bounds, max_abs_diff, token_mismatch, topk_verdict
from harness.prompts import prompt_ids
from harness.verdicts import Verdict, verdict


def limits(thresholds: dict, profile: str) -> dict:
    return thresholds[f"served_{profile}"]


def served_topk_case(case: Case, runner, reference, tokenizer,
                     thresholds: dict) -> tuple[Verdict, dict]:
    """The served port's echoed prompt of `case.seqlen` tokens against the fp32 reference."""
    text = tokenizer.decode(prompt_ids(tokenizer, case.seqlen))
    expected = tokenizer(text).input_ids
    try:
        positions, port = runner.prompt_topk(text)
    except EndpointUnsupported as e:
        pytest.skip(f"not run: {e}")
    metrics = {"logprobs_k": runner.logprobs, "prompt_tokens": len(expected)}
    mismatch = token_mismatch([p.token for p in positions],
                              [tokenizer.decode([i]) for i in expected])
    if mismatch:
        return verdict([mismatch], float("nan"), "echoed tokens equal the reference's",
                       **metrics), {}
    logits = reference.prefill(torch.tensor([expected]), all_logits=True)[0]
    t = limits(thresholds, case.dtype)
    reference_logprobs, port = align(logits, port)
    if runner.fix_echo_shift:
        # Realigned, the server's first entry (empty: it lists nothing for the first token)
        # falls on prompt token 1, whose distribution the server never reported.
        reference_logprobs, port = reference_logprobs[1:], TopK(port.ids[1:], port.logprobs[1:])
        metrics["compared_from_token"] = 2
    result = topk_verdict(reference_logprobs, port,
                          max_abs_diff_limit=t["max_abs_logprob_diff"],
                          top1_limit=t["top1_agreement"], kl_limit=t["kl_lower_bound"],
                          tail_slack=t["tail_slack"])
    if not result.passed:
        first_token = metrics.get("compared_from_token", 1)
        line, fields = first_served_divergence(reference_logprobs, port, t, first_token,
                                               expected, tokenizer)
        result.metrics.update(fields)
        if line:
            result.failures.append(line)
    return result, metrics


def first_served_divergence(reference: torch.Tensor, port: TopK, t: dict, first_token: int,
                            expected: list[int], tokenizer) -> tuple[str, dict]:
    """The first compared prompt position whose |d logprob| or KL lower bound is beyond the
    profile's limit (or not finite): its prompt token index (compared position j is the
    distribution of prompt token `first_token` + j) and text. ("", {}) where none is."""
    diffs = max_abs_diff(reference, port)
    lower, _ = kl_bounds(reference, port, t["tail_slack"])
    bad = ~(diffs <= t["max_abs_logprob_diff"]) | ~(lower <= t["kl_lower_bound"])
    hits = bad.nonzero().flatten().tolist()
    if not hits:
        return "", {}
    token = first_token + hits[0]
    text = tokenizer.decode([expected[token]])
    return (f"first beyond the limit (|d logprob| > {t['max_abs_logprob_diff']:g} or KL lower "
            f"bound > {t['kl_lower_bound']:g}): prompt token {token} ({text!r})",
            {"first_divergence_position": token, "first_divergence_token": text})

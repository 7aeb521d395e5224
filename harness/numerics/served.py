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
from harness.ports.topk import TopK, align, token_mismatch, topk_verdict
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
    return result, metrics

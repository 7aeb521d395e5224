"""Greedy generation of a port against transformers' `generate`, token for token.

The gated comparison drives the port's own `prefill`/`decode` through the harness's greedy
loop (`models.engine.generate`: argmax at every step, the left-padded row included), so what
is judged is what the other numerics checks and perf drive. A runner whose own `generate` is
another path (transformers' `generate` behind an hf or plug-in port, a port's serving loop)
could hide a broken `decode` behind a correct `generate`, or the reverse: it is compared
and gated as well, its figures and failures named `generate`. A runner that declares
`generates_by_decode` (the engine: its `generate` is that same loop) runs once. A served
port has no step-by-step decode: its `generate`, the server's completion, is its only path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.cases import Case
from harness.numerics.served import limits
from harness.prompts import prompt_ids
from harness.reference_store import tensor_digest
from harness.runners import GeneratesByDecode, Served
from harness.verdicts import Verdict, first_lines, verdict
from models.engine import Generation, generate

DECODE_PATH, GENERATE_PATH = "prefill/decode", "generate"


def greedy_prompt(tokenizer, seqlen: int) -> tuple[Tensor, Tensor]:
    """Two rows of real text: the whole prompt, and its tail left-padded to the same width."""
    ids = torch.tensor([prompt_ids(tokenizer, seqlen)] * 2)
    mask = torch.ones_like(ids)
    mask[1, : seqlen // 2] = 0
    ids[1, : seqlen // 2] = tokenizer.pad_token_id or 0
    return ids, mask


def _stopped(generation: Generation, row: int) -> str:
    reasons = list(getattr(generation, "finish_reasons", None) or [])
    reason = reasons[row] if row < len(reasons) else ""
    count = len(generation.tokens[row])
    return (f" (the port stopped after {count} tokens: {reason})" if reason else
            f" (the port stopped after {count} tokens and gave no finish reason)")


def compare_generation(ours: Generation, theirs: list[list[int]],
                       leading: int) -> tuple[list[str], dict]:
    """Failures (non-finite steps, each row's first differing token among the first
    `leading`) and figures of one path's tokens against the reference's."""
    first_diff = [next((i for i, (a, b) in enumerate(zip(o, t)) if a != b),
                       None if len(o) >= len(t) else len(o))
                  for o, t in zip(ours.tokens, theirs)]
    failures = first_lines([f"step {step} row {row}: non-finite logits"
                            for step, row in ours.nonfinite])
    failures += [f"row {row}: first differing new token at {i}"
                 + (_stopped(ours, row) if i == len(ours.tokens[row]) else "")
                 for row, i in enumerate(first_diff) if i is not None and i < leading]
    return failures, {
        "first_differing_token": first_diff, "tokens_compared": sum(map(len, theirs)),
        "tokens_equal": sum(a == b for o, t in zip(ours.tokens, theirs) for a, b in zip(o, t))}


class ReferenceGreedy:
    """The fp32 reference's greedy tokens (transformers' `generate`), computed once per run and
    per store (`RunnerPool.reference_outputs`): a runner with only `generate`."""

    def __init__(self, pool, model: str):
        self.pool, self.model = pool, model

    def generate(self, input_ids: Tensor, attention_mask: Tensor, new_tokens: int) -> Generation:
        def compute():
            reference = self.pool.reference(self.model)
            tokens = reference.generate(input_ids, attention_mask, new_tokens).tokens
            return {"tokens": torch.tensor(tokens)}
        tokens = self.pool.reference_outputs(
            self.model, "greedy", compute, dtype="fp32", rows=len(input_ids), out=new_tokens,
            prompt=tensor_digest(input_ids, attention_mask))["tokens"]
        return Generation(tokens.tolist(), ["length"] * len(tokens), [])


def greedy_case(case: Case, ported, reference, tokenizer,
                thresholds: dict) -> tuple[Verdict, str]:
    """The port's greedy tokens against the fp32 reference's; returns the verdict and the
    first row's text (of the gated path). A served 4-bit port must agree on the profile's
    leading tokens only (`greedy_min_leading`; -1: all)."""
    served = isinstance(ported, Served)
    leading = case.out
    if served:
        wanted = limits(thresholds, case.dtype)["greedy_min_leading"]
        leading = case.out if wanted < 0 else min(int(wanted), case.out)
    ids, mask = greedy_prompt(tokenizer, case.seqlen)
    theirs = reference.generate(ids, mask, case.out).tokens
    if served:
        gated = ported.generate(ids, mask, case.out)
    else:
        gated = generate(ported, ids, mask, case.out, ignore_eos=True)
    failures, metrics = compare_generation(gated, theirs, leading)
    metrics["greedy_path"] = GENERATE_PATH if served else DECODE_PATH
    by_decode = isinstance(ported, GeneratesByDecode) and ported.generates_by_decode
    if not served and not by_decode:
        own_failures, own = compare_generation(ported.generate(ids, mask, case.out), theirs,
                                               leading)
        failures += [f"generate(): {line}" for line in own_failures]
        metrics.update({f"generate_{name}": value for name, value in own.items()
                        if name != "tokens_compared"})
    rule = "identical tokens" if leading == case.out else f"first {leading} tokens identical"
    text = tokenizer.decode([t for t in gated.tokens[0] if t >= 0])
    return verdict(failures, leading, rule, **metrics), text

"""A served port's echoed top-K prompt log-probabilities against the reference's full ones.

An OpenAI-compatible server echoing a prompt with `logprobs=K` gives, for every prompt token
i >= 1, the K most likely tokens of the distribution that predicts token i (the one after
tokens 0..i-1) and their log-probabilities. The reference's all-position logits row i - 1 is
that distribution. `align` pairs them; every function here then works on those pairs.

Per position: max |d logprob| over the tokens the port listed, top-1 agreement, and bounds on
KL(reference || port). Write P for the reference (known everywhere), Q for the port (known
only on its listed set S), P_t = 1 - P(S) and Q_t = 1 - Q(S) for the tail masses. Then

    KL(P || Q) = sum_{s in S} p_s log(p_s / q_s)  +  sum_{t not in S} p_t log(p_t / q_t).

The first sum (the head) is exact. For the tail:

- lower bound, assuming nothing: by the log-sum inequality the tail term is at least
  P_t log(P_t / Q_t) (equality when Q's tail is proportional to P's). So `kl_lower` is the KL
  of the two distributions coarsened to S + {tail}, which data processing also guarantees is
  below the full KL. A port whose lower bound exceeds a limit fails it for certain. (Q_t is
  taken K float32 roundings larger than 1 - Q(S), so rounding cannot lift the bound.)
- upper bound: none exists from the top-K alone (the port may put almost no mass on a tail
  token the reference finds likely, making the full KL arbitrarily large). `kl_upper` assumes
  the port underestimates no tail token by more than `tail_slack` nats,
  log q_t >= log p_t - tail_slack, so the tail term is at most P_t * tail_slack. It is sound
  under that assumption only, and tight when the reference's tail mass P_t is small; the
  caller chooses `tail_slack` and must say so.

Shift detection: a server whose echoed distribution at position i is really the one at i + 1
(llama.cpp's server pairs each prompt token with the logits computed *at* it, not before it)
matches the reference one position later; `best_offsets` compares each position with the
reference at i - 1, i and i + 1 and `shift_failure` names the offset that wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.verdicts import Verdict, at_least, at_most, verdict

OFFSETS = (-1, 0, 1)


@dataclass(frozen=True)
class TopK:
    """A port's listed tokens per position: ids (N, K) long, -1 where an entry is missing
    (fewer listed, or a piece no single token id decodes to) and logprobs (N, K) float64,
    NaN there."""

    ids: Tensor
    logprobs: Tensor

    @property
    def valid(self) -> Tensor:
        return self.ids >= 0


def piece_ids(tokenizer) -> dict[str, int]:
    """Each token's text as a server shows it -> its id, for texts only one id decodes to
    (byte-fallback pieces that all decode to '\\ufffd' are ambiguous and left out)."""
    found: dict[str, list[int]] = {}
    for token_id in range(len(tokenizer)):
        found.setdefault(tokenizer.decode([token_id]), []).append(token_id)
    return {piece: ids[0] for piece, ids in found.items() if len(ids) == 1}


def topk_from_entries(entries: list[dict[str, float]], pieces: dict[str, int]) -> TopK:
    """TopK from `top_logprobs` dicts (token text -> logprob), one per position."""
    width = max((len(e) for e in entries), default=0)
    ids = torch.full((len(entries), width), -1, dtype=torch.long)
    logprobs = torch.full((len(entries), width), float("nan"), dtype=torch.float64)
    for row, entry in enumerate(entries):
        for col, (piece, logprob) in enumerate(entry.items()):
            if piece in pieces:
                ids[row, col], logprobs[row, col] = pieces[piece], logprob
    return TopK(ids, logprobs)


def align(reference_logits: Tensor, port: TopK) -> tuple[Tensor, TopK]:
    """(reference log-probs (T-1, V), port (T-1, K)) for prompt tokens 1..T-1, from the
    reference's all-position logits (T, V) and the port's entries for tokens 0..T-1."""
    if len(reference_logits) != len(port.ids):
        raise ValueError(f"the port echoed {len(port.ids)} prompt positions, the reference "
                         f"computed {len(reference_logits)}")
    reference = torch.log_softmax(reference_logits[:-1].double(), dim=-1)
    return reference, TopK(port.ids[1:], port.logprobs[1:])


def _at_listed(reference: Tensor, port: TopK) -> Tensor:
    """The reference's log-probs of the port's listed tokens (N, K); NaN where not listed."""
    picked = reference.gather(-1, port.ids.clamp(min=0))
    return picked.masked_fill(~port.valid, float("nan"))


def max_abs_diff(reference: Tensor, port: TopK) -> Tensor:
    """Per position (N,): max |d logprob| over the listed tokens; NaN where the port gave a
    non-finite value or listed nothing."""
    diff = (port.logprobs - _at_listed(reference, port)).abs()
    bad = (port.valid & ~torch.isfinite(port.logprobs)).any(-1) | ~port.valid.any(-1)
    return diff.nan_to_num(nan=0.0).amax(-1).masked_fill(bad, float("nan"))


def top1_agreement(reference: Tensor, port: TopK) -> Tensor:
    """Per position (N,) bool: the port's most likely listed token is the reference's argmax."""
    best = port.logprobs.nan_to_num(nan=-math.inf).argmax(-1, keepdim=True)
    return port.ids.gather(-1, best)[:, 0] == reference.argmax(-1)


def kl_bounds(reference: Tensor, port: TopK, tail_slack: float) -> tuple[Tensor, Tensor]:
    """Per position (N,): (lower, upper) bounds on KL(reference || port); see the module
    docstring for the derivation and the assumption `upper` makes."""
    p = _at_listed(reference, port).exp().nan_to_num(nan=0.0)
    q = port.logprobs.exp().nan_to_num(nan=0.0)
    log_ratio = (_at_listed(reference, port) - port.logprobs).nan_to_num(nan=0.0)
    head = (p * log_ratio).sum(-1)
    p_tail = (1 - p.sum(-1)).clamp(min=0)
    # 1 - Q(S) cancels badly when the port's tail is tiny, and the listed values are rounded
    # (float32 at best): allowing each listed probability its float32 rounding error keeps
    # the lower bound below the true KL (a larger Q_t only lowers P_t log(P_t / Q_t)).
    q_tail = (1 - q.sum(-1)).clamp(min=0) + port.valid.sum(-1) * torch.finfo(torch.float32).eps
    tail_lower = torch.where(p_tail > 0, p_tail * (p_tail.log() - q_tail.log()),
                             torch.zeros_like(p_tail))
    bad = torch.isnan(max_abs_diff(reference, port))
    lower = (head + tail_lower).clamp(min=0).masked_fill(bad, float("nan"))
    upper = (head + p_tail * tail_slack).masked_fill(bad, float("nan"))
    return lower, upper


def best_offsets(reference: Tensor, port: TopK) -> Tensor:
    """Per position i (N,): the offset o in -1, 0, +1 whose reference distribution at i + o
    is nearest (max |d logprob| over the listed tokens) to the port's at i; 0 wins ties.
    Only positions with both neighbours (1..N-2) are compared."""
    n = len(reference)
    inner = torch.arange(1, max(n - 1, 1))
    distances = torch.stack([
        max_abs_diff(reference[inner + o], TopK(port.ids[inner], port.logprobs[inner]))
        for o in OFFSETS]).nan_to_num(nan=math.inf)  # (3, N-2)
    best = torch.tensor(OFFSETS)[distances.argmin(0)]
    return torch.where(distances[1] <= distances.min(0).values, 0, best)


def shift_failure(reference: Tensor, port: TopK) -> str | None:
    """A one-line failure when most positions match a neighbouring position best."""
    offsets = best_offsets(reference, port)
    if len(offsets) == 0:
        return None
    shares = {o: (offsets == o).double().mean().item() for o in OFFSETS}
    winner = max(OFFSETS, key=lambda o: (shares[o], o == 0))
    if winner == 0 or shares[0] >= 0.5:
        return None
    where = "one position later" if winner > 0 else "one position earlier"
    return (f"the port's prompt log-probabilities match the reference's {where} "
            f"(offset {winner:+d}) at {shares[winner]:.0%} of positions (offset 0 at "
            f"{shares[0]:.0%}): the server pairs each token with a neighbour's distribution")


def token_mismatch(port_tokens: list[str], reference_tokens: list[str]) -> str | None:
    """A one-line failure naming the first token where the server's echo of the prompt differs
    from the reference tokenizer's tokens (as text), or None when they agree."""
    for i, (ours, theirs) in enumerate(zip(port_tokens, reference_tokens)):
        if ours != theirs:
            return (f"tokenizer mismatch at prompt token {i}: the server echoed {ours!r} where "
                    f"the reference tokenizer has {theirs!r}")
    if len(port_tokens) != len(reference_tokens):
        i = min(len(port_tokens), len(reference_tokens))
        extra = (f"the server echoed {port_tokens[i]!r} more" if len(port_tokens) > i
                 else f"the reference tokenizer has {reference_tokens[i]!r} more")
        return (f"tokenizer mismatch at prompt token {i}: {extra} (the server echoed "
                f"{len(port_tokens)} tokens, the reference has {len(reference_tokens)})")
    return None


def topk_verdict(reference: Tensor, port: TopK, *, max_abs_diff_limit: float,
                 top1_limit: float, kl_limit: float, tail_slack: float) -> Verdict:
    """The aligned prompt positions against the limits; a shifted echo fails first, by name.

    The KL limit applies to the lower bound, which holds whatever the port does outside its
    top-K: a port over it is over for certain. The upper bound (sound only under
    `tail_slack`) is recorded beside it; it says little where the reference's own tail mass
    is large (a nearly flat distribution), which is why it is not the gate."""
    diffs = max_abs_diff(reference, port)
    top1 = top1_agreement(reference, port).double().masked_fill(diffs.isnan(), float("nan"))
    lower, upper = kl_bounds(reference, port, tail_slack)
    # Where the lower bound passes the upper, the port's tail lies more than tail_slack
    # below the reference's: the upper bound's assumption fails there.
    violated = int((lower > upper).sum())
    metrics = dict(positions=len(diffs), max_abs_logprob_diff=_max(diffs),
                   top1_agreement=top1.mean().item(), kl_lower=_max(lower),
                   kl_upper=_max(upper) if not violated else float("nan"),
                   tail_slack=tail_slack, tail_slack_violated=violated,
                   per_position_abs_logprob_diff=diffs.tolist())
    failures = [f for f in [shift_failure(reference, port)] if f]
    if not at_most(metrics["max_abs_logprob_diff"], max_abs_diff_limit):
        failures.append(f"max |d logprob| {metrics['max_abs_logprob_diff']:.3g} over the "
                        f"port's top-K > {max_abs_diff_limit:g}")
    if not at_least(metrics["top1_agreement"], top1_limit):
        failures.append(f"top-1 agreement {metrics['top1_agreement']:.4f} < {top1_limit}")
    if not at_most(metrics["kl_lower"], kl_limit):
        upper = (f"upper bound {metrics['kl_upper']:.3g} with tail slack {tail_slack:g} nats"
                 if not violated else f"no upper bound: at {violated} positions the port's "
                 f"tail is more than the tail slack of {tail_slack:g} nats below the "
                 "reference's")
        failures.append(f"KL at least {metrics['kl_lower']:.3g} > {kl_limit:g} ({upper})")
    return verdict(failures, max_abs_diff_limit, f"max |d logprob| <= {max_abs_diff_limit:g},"
                   f" top-1 >= {top1_limit}, KL lower bound <= {kl_limit:g}", **metrics)


def _max(values: Tensor) -> float:
    """Max that is NaN when any value is (or there are none)."""
    if len(values) == 0 or values.isnan().any():
        return float("nan")
    return values.max().item()

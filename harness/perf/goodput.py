"""Goodput: requests that met their latency targets, as vLLM's serving benchmark counts them.

Targets (`--goodput ttft:500 tpot:50 e2el:2000`, any subset, in ms) are service-level
objectives per request: a request is good when its TTFT, TPOT and E2EL are each at most
their target (a request of fewer than two tokens has TPOT 0, as in vLLM; a failed request
is never good). Request goodput is good requests / the load's duration (requests/s); the
share meeting each target and every target is in percent of all requests sent.

The gate compares the share meeting every target with each stored run of ours that ran the
same case on the same device, re-judging that run's stored requests by today's targets, so
the two shares answer the same question. The request is the unit (one good/not-good value
each): the share fails when it is worse than the stored one by more than the tolerance and
a one-sided Mann-Whitney U test on those values says it is beyond noise (alpha 0.05).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

from harness.perf.gate import ALPHA, Comparison
from harness.stats import slower_p_value, smallest_slower_p_value

TARGETS = ("ttft", "tpot", "e2el")
EXAMPLE = "ttft:500 tpot:50 e2el:2000"


@dataclass(frozen=True)
class Goodput:
    """Latency targets in ms; None: no target on that metric."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    @classmethod
    def parse(cls, text: str | list[str]) -> Goodput:
        """`ttft:500 tpot:50 e2el:2000` (any subset, space- or comma-separated; a list of
        such tokens as well); a ValueError names the bad token and what was expected."""
        tokens = [t for part in ([text] if isinstance(text, str) else text)
                  for t in re.split(r"[\s,]+", part) if t]
        if not tokens:
            raise ValueError(f"goodput: no targets; expected NAME:MS pairs such as {EXAMPLE}")
        found: dict[str, float] = {}
        for token in tokens:
            name, sep, value = token.partition(":")
            if not sep:
                raise ValueError(f"goodput target {token!r}: expected NAME:MS, NAME one of "
                                 f"{', '.join(TARGETS)} (e.g. {EXAMPLE})")
            if name not in TARGETS:
                raise ValueError(f"goodput target {token!r}: unknown metric {name!r}; "
                                 f"expected one of {', '.join(TARGETS)}")
            try:
                ms = float(value)
            except ValueError:
                ms = math.nan
            if not (math.isfinite(ms) and ms > 0):
                raise ValueError(f"goodput target {token!r}: {value!r} is not a time; "
                                 "expected milliseconds > 0, e.g. ttft:500")
            if name in found:
                raise ValueError(f"goodput target {token!r}: {name} is given twice")
            found[name] = ms
        return cls(**{f"{name}_ms": ms for name, ms in found.items()})

    def targets(self) -> dict[str, float]:
        """{metric: ms} of the targets given, in TARGETS order."""
        return {name: getattr(self, f"{name}_ms") for name in TARGETS
                if getattr(self, f"{name}_ms") is not None}

    def __str__(self) -> str:
        return " ".join(f"{name}:{ms:g}" for name, ms in self.targets().items())


class Timing(NamedTuple):
    """What goodput judges of a request (a `Request` has these too)."""

    ttft_ms: float
    e2el_ms: float
    output_tokens: int
    error: str = ""


def _value(request, name: str) -> float:
    if name == "tpot":
        if request.output_tokens < 2:
            return 0.0  # as vLLM: a request of one token meets any TPOT target
        return (request.e2el_ms - request.ttft_ms) / (request.output_tokens - 1)
    return getattr(request, f"{name}_ms")


def meets(request, goodput: Goodput) -> dict[str, bool]:
    """Per target, whether the request met it (a failed request meets none)."""
    return {name: not request.error and _value(request, name) <= ms
            for name, ms in goodput.targets().items()}


def good(requests, goodput: Goodput) -> list[bool]:
    """Per request, whether it met every target."""
    return [all(meets(r, goodput).values()) for r in requests]


def goodput_metrics(requests, goodput: Goodput | None, duration_s: float) -> dict:
    """request_goodput (good requests/s), good_requests, good_request_pct (% meeting every
    target) and meets_<metric>_pct per target; with no targets, the targets are recorded
    as none and request_goodput is None (as in vLLM's result)."""
    if goodput is None or not goodput.targets():
        return {"goodput_targets": None, "request_goodput": None}
    n = len(requests)
    flags = good(requests, goodput)
    found = {"goodput_targets": str(goodput), **{f"goodput_{name}_ms": ms for name, ms in
                                                 goodput.targets().items()},
             "request_goodput": sum(flags) / duration_s if duration_s > 0 else math.nan,
             "good_requests": sum(flags),
             "good_request_pct": 100 * sum(flags) / n if n else math.nan}
    for name in goodput.targets():
        met = sum(meets(r, goodput)[name] for r in requests)
        found[f"meets_{name}_pct"] = 100 * met / n if n else math.nan
    return found


def stored_timings(record: dict) -> list[Timing] | None:
    """A stored record's requests (its samples and output lengths); None for a record that
    kept no output lengths (from before rate cases)."""
    samples, lens = record.get("samples") or {}, record.get("output_lens")
    ttft, e2el = samples.get("first_token_ms"), samples.get("response_s")
    if not lens or ttft is None or e2el is None or not len(lens) == len(ttft) == len(e2el):
        return None
    errors = record.get("request_errors") or [""] * len(lens)
    return [Timing(t, s * 1e3, n, e) for t, s, n, e in zip(ttft, e2el, lens, errors)]


def goodput_comparisons(case_id: str, ours: list[bool], goodput: Goodput | None, device: str,
                        stored: dict, tolerance: float) -> list[Comparison]:
    """The share meeting every target against each stored run of ours (`stored`: name ->
    OursBaseline) holding this case's requests; gated on the same device only."""
    if goodput is None or not goodput.targets() or not ours:
        return []
    found = []
    for name, baseline in stored.items():
        record = baseline.cases.get(case_id)
        timings = stored_timings(record) if record else None
        if not timings:
            continue
        theirs = good(timings, goodput)
        found.append(_compare(name, record.get("device", ""), ours, theirs,
                              record.get("device") == device, tolerance))
    return found


def _compare(name: str, device: str, ours: list[bool], theirs: list[bool], same: bool,
             tolerance: float) -> Comparison:
    mine, their = 100 * sum(ours) / len(ours), 100 * sum(theirs) / len(theirs)
    slowdown = their / mine if mine else (math.inf if their else 1.0)
    c = Comparison(name, device, "goodput", mine, their, "%", slowdown, same,
                   ratio=1 / slowdown if slowdown else math.nan, gated=same)
    if same and slowdown > 1 + tolerance:
        c.p_value = slower_p_value(map(float, ours), map(float, theirs), higher_is_better=True)
        beyond_noise = not c.p_value >= ALPHA
        if smallest_slower_p_value(len(ours), len(theirs)) >= ALPHA:
            beyond_noise = True
            c.note = (f"{len(ours)} vs {len(theirs)} requests cannot reach p < {ALPHA}: "
                      "noise cannot be separated, send more --num-requests")
        c.passed = not beyond_noise
    return c

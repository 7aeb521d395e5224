"""The highest request rate a served port sustains: MLPerf Inference's Server scenario.

MLPerf's loadgen finds a server's peak performance by raising the target rate until a run
fails its latency bound, then bisecting between the last rate that passed and the first that
failed. Here a probe runs the load at one rate and passes when at least P% of its requests
meet every goodput target. The search probes `start`, doubles while probes pass (halves
while they fail) to bracket the boundary, then bisects until the bracket is narrower than
`precision` relative to its lower end, within `max_probes` probes. It assumes a server that
holds a rate holds every lower one; each probe is reported as it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MIN_RATE = 1 / 16  # requests/s: the halving stops here (16 requests take 4 min there)
MAX_RATE = 4096.0  # requests/s: the doubling stops here


@dataclass
class Probe:
    rate: float
    passed: bool
    outcome: Any


@dataclass
class RateSearch:
    """The best passing rate (None: none passed) and its outcome, the probes in order, the
    final bracket (highest pass, lowest fail; None where not found) and why it stopped."""

    rate: float | None
    outcome: Any
    probes: list[Probe] = field(default_factory=list)
    bracket: tuple[float | None, float | None] = (None, None)
    reason: str = ""


def max_rate_search(probe: Callable[[float], Any], passes: Callable[[Any], bool],
                    start: float = 1.0, precision: float = 0.05, max_probes: int = 12,
                    report: Callable[[float, Any], None] | None = None,
                    min_rate: float = MIN_RATE, max_rate: float = MAX_RATE) -> RateSearch:
    """The highest rate whose `probe(rate)` outcome `passes`; `report(rate, outcome)` after
    each probe."""
    if not (0 < start and 0 < precision and max_probes >= 1 and min_rate <= start <= max_rate):
        raise ValueError(f"max-rate search: start {start} within [{min_rate}, {max_rate}], "
                         f"precision {precision} > 0 and max_probes {max_probes} >= 1 expected")
    search = RateSearch(None, None)

    def run(rate: float) -> bool:
        outcome = probe(rate)
        ok = bool(passes(outcome))
        search.probes.append(Probe(rate, ok, outcome))
        if report is not None:
            report(rate, outcome)
        return ok

    low, high = _bracket(run, start, max_probes, min_rate, max_rate)
    while (low is not None and high is not None and high / low - 1 > precision
           and len(search.probes) < max_probes):
        middle = (low + high) / 2
        if run(middle):
            low = middle
        else:
            high = middle
    search.bracket = (low, high)
    search.reason = _why(low, high, len(search.probes), max_probes, precision, min_rate,
                         max_rate)
    if low is not None:
        search.rate = low
        search.outcome = next(p.outcome for p in search.probes if p.rate == low)
    return search


def _bracket(run, start: float, max_probes: int, min_rate: float,
             max_rate: float) -> tuple[float | None, float | None]:
    """(highest passing, lowest failing) rate from doubling or halving `start`."""
    low = high = None
    rate, probes = start, 0
    while probes < max_probes:
        probes += 1
        if run(rate):
            low = rate
            if high is not None or rate * 2 > max_rate:
                break
            rate *= 2
        else:
            high = rate
            if low is not None or rate / 2 < min_rate:
                break
            rate /= 2
    return low, high


def _why(low, high, probes: int, max_probes: int, precision: float, min_rate: float,
         max_rate: float) -> str:
    if low is None:
        lowest = high if high is not None else min_rate
        return (f"no rate met the targets: the lowest probed, {lowest:.4g} requests/s, "
                f"failed ({probes} probes)")
    if high is None:
        return (f"every probed rate met the targets, up to {low:.4g} requests/s (the search "
                f"stops at {max_rate:g} or after {max_probes} probes): at least that")
    if high / low - 1 > precision:
        return (f"between {low:.4g} and {high:.4g} requests/s after the {max_probes}-probe "
                f"cap (wider than the {precision:.0%} precision)")
    return (f"between {low:.4g} (met) and {high:.4g} requests/s (missed), within "
            f"{precision:.0%}, in {probes} probes")

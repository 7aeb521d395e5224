"""The perf suite's case grid, and the longest sequences it will run."""

from __future__ import annotations

from itertools import product
from typing import TYPE_CHECKING

from harness.cases import Case

if TYPE_CHECKING:
    from harness.settings import Settings


def served_levels(perf) -> list[tuple[str, ...]]:
    """The tags of a served port's cases: each --concurrency level of closed-loop clients
    (`c4`); with --request-rate, each rate (`r2.0`), capped by each --concurrency level
    given; with --max-rate, also (or only) the search (`rmax`)."""
    load = perf.served_load
    caps = [(f"c{c}",) for c in perf.concurrency_given] or [()]
    drawn = (load.prompts,) if load.prompts != "fixed" else ()  # prompts from a set
    levels = [(f"r{rate}", *cap, *drawn) for rate in load.request_rates for cap in caps]
    if load.max_rate:
        return levels + [("rmax", *cap, *drawn) for cap in caps]
    return levels or [(f"c{c}",) for c in perf.concurrency]


def served_pairs(perf) -> list[tuple[int, int]]:
    """A served port's (in, out) pairs: with prompts drawn from a test set, whose lengths are
    the set's, one per output length (the case's input length is then the first pair's)."""
    if perf.served_load.prompts in ("fixed", "random"):
        return perf.pairs
    return list({out: (i, out) for i, out in reversed(perf.pairs)}.values())[::-1]


def cases(settings: Settings) -> list[Case]:
    """The perf grid: batches x (in, out) pairs, or batch "max" with --max-batch; a served
    port's cases are its load levels (`served_levels`)."""
    perf = settings.suites["perf"]
    batches = ["max"] if perf.max_batch else perf.batches
    found = []
    for m, p in [(model, p) for model in perf.models for p in settings.ports.of(model)]:
        if p.served and perf.max_batch or perf.served_load.max_rate and not p.served:
            continue  # a server's batch is its own business; a rate is a server's
        # A served port: one request per concurrent client, at each load level.
        levels = [(1, level) for level in served_levels(perf)] if p.served else [
            (b, ()) for b in batches]
        found += [Case(m, h, d, b, i, o, tags=(*settings.tags, *level), port=p.case_port)
                  for h, d, (b, level), (i, o) in product(
                      settings.hardware, settings.model_dtypes(m, settings.dtypes_given
                                                               or ["fp32"], p),
                      levels, served_pairs(perf) if p.served else perf.pairs)]
    return found


def length_requests(settings: Settings) -> list[tuple[list[str], int, str]]:
    """(models, tokens, what asks for them): each (in, out) pair of the grid."""
    return [(settings.suites["perf"].models, i + o, f"perf in {i} + out {o}")
            for i, o in settings.suites["perf"].pairs]

"""The perf suite's case grid, and the longest sequences it will run."""

from __future__ import annotations

from itertools import product
from typing import TYPE_CHECKING

from harness.cases import Case

if TYPE_CHECKING:
    from harness.settings import Settings


def cases(settings: Settings) -> list[Case]:
    """The perf grid: batches x (in, out) pairs, or batch "max" with --max-batch."""
    perf = settings.suites["perf"]
    batches = ["max"] if perf.max_batch else perf.batches
    found = []
    for m, p in [(model, p) for model in perf.models for p in settings.ports.of(model)]:
        if p.served and perf.max_batch:
            continue  # a server's batch is its own business
        # A served port: one request per concurrent client, at each --concurrency level.
        levels = [(1, (f"c{c}",)) for c in perf.concurrency] if p.served else [
            (b, ()) for b in batches]
        found += [Case(m, h, d, b, i, o, tags=(*settings.tags, *level), port=p.case_port)
                  for h, d, (b, level), (i, o) in product(
                      settings.hardware, settings.model_dtypes(m, settings.dtypes_given
                                                               or ["fp32"], p),
                      levels, perf.pairs)]
    return found


def length_requests(settings: Settings) -> list[tuple[list[str], int, str]]:
    """(models, tokens, what asks for them): each (in, out) pair of the grid."""
    return [(settings.suites["perf"].models, i + o, f"perf in {i} + out {o}")
            for i, o in settings.suites["perf"].pairs]

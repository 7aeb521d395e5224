"""The perf suite's session end: what only the whole run can show, as extra records."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import named_baselines
from harness.perf.case import baselines
from harness.perf.gate import aggregate_rows

if TYPE_CHECKING:
    from harness.settings import Settings


def finish(rows: list[dict], settings: Settings) -> list[dict]:
    """Records of the perf tables' grid means the run's latest `rows` covered (computed once
    all cases are in), and of each --perf-baseline that no case met."""
    perf = settings.suites["perf"]
    tables, _ = baselines(perf.baselines_dir, perf.baseline_names())
    means = aggregate_rows(rows, tables, perf.tolerance, perf.min_ratio, perf.assume_unit)
    named = [("--perf-baseline", "perf", name) for name in perf.baselines or []]
    return means + named_baselines.records(rows + means, named, perf.baselines_dir)

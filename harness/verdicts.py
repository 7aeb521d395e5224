"""The one verdict shape every gate returns, and comparisons that fail on what they cannot measure.

A NaN compares False with everything, so `value > limit` lets a NaN pass a check written as
"fail when above the limit". Every gate therefore asks the opposite question through
`at_most` / `at_least`, which only pass a finite value on the right side of the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Verdict:
    """passed, one-line failure reasons, the limit applied (number and rule) and the metrics."""

    passed: bool
    failures: list[str]
    limit: float
    rule: str = ""
    metrics: dict = field(default_factory=dict)

    def message(self) -> str:
        return "; ".join(self.failures)


def verdict(failures: list[str], limit: float, rule: str = "", **metrics) -> Verdict:
    return Verdict(not failures, failures, limit, rule, metrics)


def at_most(value: float, limit: float) -> bool:
    """True only for a finite value <= limit (NaN and Inf fail)."""
    return math.isfinite(value) and value <= limit


def at_least(value: float, limit: float) -> bool:
    """True only for a finite value >= limit (NaN and Inf fail)."""
    return math.isfinite(value) and value >= limit


def nan_max(values) -> float:
    """max() that returns NaN when any value is NaN (Python's max may silently skip it)."""
    values = list(values)
    if not values:
        return float("nan")
    if any(math.isnan(v) for v in values):
        return float("nan")
    return max(values)


def nonfinite_rows(reference: Tensor, ported: Tensor) -> list[tuple[int, int, bool]]:
    """(row, count, reference too) for each row of ported logits (B, V) holding NaN or Inf;
    `reference too` says whether the reference row is non-finite as well."""
    counts = (~torch.isfinite(ported.float())).sum(-1).tolist()
    reference_bad = (~torch.isfinite(reference.float())).any(-1).tolist()
    return [(row, int(n), reference_bad[row]) for row, n in enumerate(counts) if n]


def first_lines(lines: list[str], keep: int = 3) -> list[str]:
    """At most `keep` lines, then one that counts the rest."""
    if len(lines) <= keep:
        return lines
    return lines[:keep] + [f"... and {len(lines) - keep} more"]

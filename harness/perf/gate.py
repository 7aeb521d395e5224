"""The perf gate: a measured case against every stored baseline that matches it.

A metric (first-token latency, next-token latency, end-to-end throughput) fails on the same
device only when it is worse than the baseline by more than the tolerance AND the difference is
beyond noise:
  - against a run of ours (every sample stored): a one-sided Mann-Whitney U test, alpha 0.05;
  - against a source table (medians only): the run's own spread, i.e. even its best repeat is
    worse than the baseline by more than the tolerance.
Across devices (our NPU against the seeds' A100) the speed ratio is reported, and gates only
when a minimum ratio is given.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from harness.baselines import OursBaseline, PerfRow
from harness.cases import Case
from harness.perf.timing import Samples
from harness.stats import describe, slower_p_value
from harness.verdicts import verdict

ALPHA = 0.05
# metric -> (label, unit, higher is better)
METRICS = {"first_token": ("first-token latency", "ms", False),
           "next_token": ("next-token latency", "ms", False),
           "e2e_throughput": ("E2E throughput", "tokens/s", True)}


@dataclass
class Comparison:
    baseline: str  # baseline name (file stem or saved name) and row
    device: str
    metric: str
    ours: float
    theirs: float
    unit: str
    slowdown: float  # > 1: we are slower
    same_device: bool
    p_value: float = float("nan")
    gated: bool = False
    passed: bool = True
    note: str = ""

    def line(self, tolerance: float, min_ratio: float | None) -> str:
        label, unit, _ = METRICS[self.metric]
        where = "same device" if self.same_device else f"{self.device}"
        text = (f"{label} {self.ours:.4g} {unit} vs {self.theirs:.4g} {unit} in baseline "
                f"{self.baseline} ({where}): {self.slowdown:.3f}x ")
        if self.same_device:
            text += f"slower > {1 + tolerance:.2f} tolerance"
            if not math.isnan(self.p_value):
                text += f", Mann-Whitney p={self.p_value:.3g}"
            return text
        return text + f"slower, speed ratio {1 / self.slowdown:.3f} < minimum {min_ratio}"


def same_device(baseline_device: str, ours: str) -> bool:
    """'910B3' matches 'Ascend910B3'; a saved run of ours must name the very same device."""
    def key(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())
    return bool(key(baseline_device)) and key(baseline_device) in key(ours)


def measured(samples: Samples, metric: str, batch: int, out_len: int,
             every_step: bool = False) -> list[float]:
    """Per-repeat values of a metric; next-token latency is each repeat's mean step, or every
    decode step with `every_step` (the samples a test between two runs of ours uses)."""
    if metric == "first_token":
        return list(samples.first_token_ms)
    if metric == "next_token":
        if every_step:
            return [ms for steps in samples.decode_ms for ms in steps]
        return samples.per_repeat_mean("decode_ms")
    return [batch * out_len / s for s in samples.response_s]


def _compare(name: str, device: str, metric: str, ours: list[float], theirs: float | list[float],
             same: bool, tolerance: float, min_ratio: float | None, note: str = "") -> Comparison:
    _, unit, higher_better = METRICS[metric]
    ours_center = describe(ours)["median"]
    theirs_center = describe(theirs)["median"] if isinstance(theirs, list) else theirs
    slowdown = (theirs_center / ours_center if higher_better else ours_center / theirs_center)
    c = Comparison(name, device, metric, ours_center, theirs_center, unit, slowdown, same,
                   note=note)
    if same:
        c.gated = True
        if isinstance(theirs, list):
            c.p_value = slower_p_value(ours, theirs, higher_is_better=higher_better)
            beyond_noise = not c.p_value >= ALPHA  # NaN: cannot tell, counts against
        else:
            best = max(ours) if higher_better else min(ours)
            beyond_noise = (theirs / best if higher_better else best / theirs) > 1 + tolerance
        c.passed = not (beyond_noise and slowdown > 1 + tolerance) and math.isfinite(slowdown)
    elif min_ratio is not None:
        c.gated = True
        c.passed = math.isfinite(slowdown) and 1 / slowdown >= min_ratio
    return c


def table_value(row: PerfRow, assume_unit: str | None) -> tuple[float | None, str]:
    """The row's value in the metric's unit, or None with the reason it cannot be used."""
    unit = assume_unit if row.unit == "ambiguous" else row.unit
    if unit is None or unit == "ambiguous":
        return None, (f"{row.name} row {row.line}: unit is ambiguous in the source; pass "
                      "--assume-unit ms or tokens/s to use it")
    target = METRICS[row.metric][1]
    if unit == target:
        return row.value, ""
    if unit == "s" and target == "ms":
        return row.value * 1e3, ""
    if {unit, target} == {"ms", "tokens/s"}:
        return 1e3 / row.value, f"read as {unit}"  # ms per token <-> tokens per second
    return None, f"{row.name} row {row.line}: unit {unit!r} does not convert to {target}"


def table_rows_for(case: Case, rows: list[PerfRow]) -> list[PerfRow]:
    """Single-cell rows of the same model, hardware, dtype, batch and lengths (a row that
    states no lengths matches every length of its batch)."""
    return [r for r in rows if r.metric in METRICS and r.grid is None
            and (r.model, r.hardware, r.dtype, r.batch) == (case.model, case.hardware, case.dtype,
                                                              case.batch)
            and r.input_len in (None, case.seqlen) and r.output_len in (None, case.out)]


def gate(case: Case, samples: Samples, device: str, rows: list[PerfRow],
         ours: dict[str, OursBaseline], tolerance: float, min_ratio: float | None,
         assume_unit: str | None):
    """Verdict of a measured case against the matching table rows and saved runs of ours."""
    comparisons, unusable = [], []
    for row in table_rows_for(case, rows):
        value, note = table_value(row, assume_unit)
        if value is None:
            unusable.append(note)
            continue
        comparisons.append(_compare(
            f"{row.name}:{row.line}", row.device, row.metric,
            measured(samples, row.metric, case.batch, case.out), value,
            same_device(row.device, device), tolerance, min_ratio, note))
    for name, baseline in ours.items():
        theirs = baseline.cases.get(case.id)
        if theirs is None:
            continue
        base = Samples(**theirs["samples"])
        for metric in METRICS:
            comparisons.append(_compare(
                name, theirs.get("device", ""), metric,
                measured(samples, metric, case.batch, case.out, every_step=True),
                measured(base, metric, case.batch, case.out, every_step=True),
                theirs.get("device") == device, tolerance, min_ratio))
    failures = [c.line(tolerance, min_ratio) for c in comparisons if not c.passed]
    rule = (f"<= {1 + tolerance:.2f}x a same-device baseline beyond noise"
            if comparisons else "no matching baseline (measured only)")
    return verdict(failures, 1 + tolerance, rule,
                   baselines_compared=len({c.baseline for c in comparisons}),
                   baselines_unusable="; ".join(unusable)), [asdict(c) for c in comparisons]


def aggregate_rows(records: list[dict], rows: list[PerfRow], tolerance: float,
                   min_ratio: float | None, assume_unit: str | None) -> list[dict]:
    """Records for the tables' grid means (e.g. the mean over 2^5..2^10 x 2^5..2^10) that
    this run covered completely: our mean over the same cells against the table's figure."""
    measured = {(r["model"], r["hardware"], r["dtype"], r["batch"], r["seqlen"], r["out"]): r
                for r in records if r.get("test") == "test_perf" and r.get("outcome") == "passed"}
    out = []
    for row in rows:
        if row.grid is None or row.metric not in ("first_token", "next_token"):
            continue
        cells = [measured.get((row.model, row.hardware, row.dtype, row.batch, i, o))
                 for i, o in row.grid_cells()]
        value, note = table_value(row, assume_unit)
        if None in cells or value is None:
            continue  # the run did not cover the grid
        column = ("forward_first_token_time(ms)" if row.metric == "first_token"
                  else "forward_next_token_time(ms)")
        best = "first_token_ms_min" if row.metric == "first_token" else "next_token_ms_min"
        ours = sum(c[column] for c in cells) / len(cells)
        fastest = sum(c[best] for c in cells) / len(cells)
        same = same_device(row.device, cells[0].get("device", ""))
        comparison = _compare(f"{row.name}:{row.line}", row.device, row.metric, [ours], value,
                              same, tolerance, min_ratio, note)
        if same:  # the run's own spread: even its best repeats are beyond the tolerance
            comparison.passed = not (fastest / value > 1 + tolerance)
        (i0, i1), (o0, o1) = (row.grid[0][0], row.grid[0][-1]), (row.grid[1][0], row.grid[1][-1])
        failures = [] if comparison.passed else [comparison.line(tolerance, min_ratio)]
        out.append({
            "suite": "perf", "test": "test_grid_mean", "model": row.model,
            "case": f"{row.model}-{row.hardware}-{row.dtype}-bs{row.batch}-grid-in2^{i0}..2^{i1}"
                    f"-out2^{o0}..2^{o1}-{row.metric}",
            "hardware": row.hardware, "dtype": row.dtype, "batch": row.batch,
            "outcome": "passed" if comparison.passed else "failed",
            "passed": comparison.passed, "reason": "; ".join(failures),
            "cells": len(cells), "ours_mean": ours, "baseline_value": value,
            "ratio": comparison.slowdown, "comparisons": [asdict(comparison)]})
    return out

"""The perf gate: a measured case against every stored baseline that matches it.

A baseline matches a case by model, dtype, batch and lengths, whatever device it was measured
on. Each metric (first-token latency, next-token latency, end-to-end throughput) is shown as
one figure everywhere (the CSV column `FIGURES` names) and, on the same device, fails only when
it is worse than the baseline by more than the tolerance AND the difference is beyond noise:
  - against a run of ours (every sample stored): a one-sided Mann-Whitney U test, alpha 0.05,
    on one value per request (its first token, its mean decode step, its throughput). The
    decode steps of one request share its machine state and are correlated, so pooling them
    as independent samples makes any drift between runs look certain. When the two runs have
    too few requests for the test ever to reach alpha (2 vs 2), the comparison says so and
    counts against, like any gate that cannot measure;
  - against a source table (medians only): the run's own spread, i.e. even its best request
    is worse than the baseline by more than the tolerance.
Across devices (our CPU or NPU against the tables' A100 and 910B3 rows) the speed ratio is
reported, and gates only when a minimum ratio is given.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from harness.baselines import OursBaseline, PerfRow
from harness.cases import Case
from harness.perf.timing import Samples, summary
from harness.stats import slower_p_value, smallest_slower_p_value
from harness.verdicts import verdict

ALPHA = 0.05
# metric -> (label, unit, higher is better)
METRICS = {"first_token": ("first-token latency", "ms", False),
           "next_token": ("next-token latency", "ms", False),
           "e2e_throughput": ("E2E throughput", "tokens/s", True),
           # a served rate case's share of requests meeting its --goodput targets, gated by
           # harness/perf/goodput.py (one value per request: met every target or not)
           "goodput": ("requests meeting the goodput targets", "%", True)}
# metric -> the record's (and CSV's) column holding its figure: the one number shown for it
FIGURES = {"first_token": "forward_first_token_time(ms)",
           "next_token": "forward_next_token_time(ms)",
           "e2e_throughput": "e2e_throughput_tokens_per_s"}


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
    ratio: float = float("nan")  # our speed / theirs: 1 / slowdown
    table_row: str = ""  # "file:line" of a source-table row; empty for a run of ours

    def line(self, tolerance: float, min_ratio: float | None) -> str:
        label, unit, _ = METRICS[self.metric]
        where = "same device" if self.same_device else f"{self.device}"
        text = (f"{label} {self.ours:.4g} {unit} vs {self.theirs:.4g} {unit} in baseline "
                f"{self.baseline} ({where}): {self.slowdown:.3f}x ")
        if self.same_device:
            text += f"slower > {1 + tolerance:.2f} tolerance"
            if not math.isnan(self.p_value):
                text += f", Mann-Whitney p={self.p_value:.3g}"
            return text + (f" ({self.note})" if self.note else "")
        return text + f"slower, speed ratio {self.ratio:.3f} < minimum {min_ratio}"


def same_device(baseline_device: str, ours: str) -> bool:
    """'910B3' matches 'Ascend910B3'; a saved run of ours must name the very same device."""
    def key(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())
    return bool(key(baseline_device)) and key(baseline_device) in key(ours)


def request_values(samples: Samples, metric: str, batch: int, out_len: int) -> list[float]:
    """One value of a metric per measured request: the independent units of the noise test."""
    if metric == "first_token":
        return list(samples.first_token_ms)
    if metric == "next_token":
        return samples.per_repeat_mean("decode_ms")
    return [batch * out_len / s for s in samples.response_s]


def figures(samples: Samples, case: Case) -> dict[str, float]:
    """Each metric's figure: the record's column, so the gate's message, the CSV, the console
    and every command show the same number."""
    row = summary(samples, case.batch, case.seqlen, case.out)
    return {metric: row[column] for metric, column in FIGURES.items()}


def _compare(name: str, device: str, metric: str, ours: list[float], ours_figure: float,
             theirs: float | list[float], theirs_figure: float, same: bool, tolerance: float,
             min_ratio: float | None, note: str = "", table_row: str = "") -> Comparison:
    """`ours` are per-request values; `theirs` too for a run of ours, a table's figure else."""
    _, unit, higher_better = METRICS[metric]
    slowdown = (theirs_figure / ours_figure if higher_better else ours_figure / theirs_figure)
    c = Comparison(name, device, metric, ours_figure, theirs_figure, unit, slowdown, same,
                   note=note, ratio=1 / slowdown if slowdown else float("nan"),
                   table_row=table_row)
    if same:
        c.gated = True
        if isinstance(theirs, list):
            c.p_value = slower_p_value(ours, theirs, higher_is_better=higher_better)
            beyond_noise = not c.p_value >= ALPHA  # NaN: cannot tell, counts against
            if smallest_slower_p_value(len(ours), len(theirs)) >= ALPHA:
                beyond_noise = True  # no outcome could pass the test: cannot tell, counts
                c.note = (f"{len(ours)} vs {len(theirs)} requests cannot reach p < {ALPHA}: "
                          "noise cannot be separated, measure more --repeats")
        else:
            best = max(ours) if higher_better else min(ours)
            beyond_noise = (theirs / best if higher_better else best / theirs) > 1 + tolerance
        c.passed = not (beyond_noise and slowdown > 1 + tolerance) and math.isfinite(slowdown)
    elif min_ratio is not None:
        c.gated = True
        c.passed = math.isfinite(slowdown) and c.ratio >= min_ratio
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
    """Single-cell rows of the same model, dtype, batch and lengths, on any device (a row
    that states no lengths matches every length of its batch)."""
    return [r for r in rows if r.metric in METRICS and r.grid is None
            and (r.model, r.dtype, r.batch) == (case.model, case.dtype, case.batch)
            and r.input_len in (None, case.seqlen) and r.output_len in (None, case.out)]


def same_hardware(row: PerfRow, hardware: str, device: str) -> bool:
    return row.hardware == hardware and same_device(row.device, device)


def gate(case: Case, samples: Samples, device: str, rows: list[PerfRow],
         ours: dict[str, OursBaseline], tolerance: float, min_ratio: float | None,
         assume_unit: str | None):
    """Verdict of a measured case against the matching table rows and saved runs of ours."""
    comparisons, unusable = [], []
    figure = figures(samples, case)
    for row in table_rows_for(case, rows):
        value, note = table_value(row, assume_unit)
        if value is None:
            unusable.append(note)
            continue
        comparisons.append(_compare(
            f"{row.name}:{row.line}", row.device, row.metric,
            request_values(samples, row.metric, case.batch, case.out), figure[row.metric],
            value, value, same_hardware(row, case.hardware, device), tolerance, min_ratio,
            note, table_row=f"{row.name}:{row.line}"))
    for name, baseline in ours.items():
        theirs = baseline.cases.get(case.id)
        if theirs is None:
            continue
        base = Samples(**theirs["samples"])
        base_figure = figures(base, case)
        for metric in FIGURES:
            comparisons.append(_compare(
                name, theirs.get("device", ""), metric,
                request_values(samples, metric, case.batch, case.out), figure[metric],
                request_values(base, metric, case.batch, case.out), base_figure[metric],
                theirs.get("device") == device, tolerance, min_ratio))
    failures = [c.line(tolerance, min_ratio) for c in comparisons if not c.passed]
    rule = (f"<= {1 + tolerance:.2f}x a same-device baseline beyond noise"
            if comparisons else "no matching baseline (measured only)")
    # gated: false when no comparison judged the case (none, or other devices' figures only)
    return verdict(failures, 1 + tolerance, rule,
                   baselines_compared=len({c.baseline for c in comparisons}),
                   baselines_unusable="; ".join(unusable),
                   gated=any(c.gated for c in comparisons)), [asdict(c) for c in comparisons]


def aggregate_rows(records: list[dict], rows: list[PerfRow], tolerance: float,
                   min_ratio: float | None, assume_unit: str | None) -> list[dict]:
    """Records for the tables' grid means (e.g. the mean over 2^5..2^10 x 2^5..2^10) that
    this run covered completely on one hardware, against every device's row: our mean over
    the same cells against the table's figure."""
    measured: dict[str, dict[tuple, dict]] = {}
    for r in records:
        if r.get("test") == "test_perf" and r.get("forward_next_token_time(ms)") is not None:
            measured.setdefault(r["hardware"], {})[
                (r["model"], r["dtype"], r["batch"], r["seqlen"], r["out"])] = r
    out = []
    for row in rows:
        if row.grid is None or row.metric not in ("first_token", "next_token"):
            continue
        value, note = table_value(row, assume_unit)
        for hardware, cells_of in sorted(measured.items()):
            cells = [cells_of.get((row.model, row.dtype, row.batch, i, o))
                     for i, o in row.grid_cells()]
            if None in cells or value is None:
                continue  # the run did not cover the grid
            out.append(_grid_mean(row, hardware, cells, value, note, tolerance, min_ratio))
    return out


def _grid_mean(row: PerfRow, hardware: str, cells: list[dict], value: float, note: str,
               tolerance: float, min_ratio: float | None) -> dict:
    column = FIGURES[row.metric]
    best = "first_token_ms_min" if row.metric == "first_token" else "next_token_ms_min"
    ours = sum(c[column] for c in cells) / len(cells)
    fastest = sum(c[best] for c in cells) / len(cells)
    same = same_hardware(row, hardware, cells[0].get("device", ""))
    comparison = _compare(f"{row.name}:{row.line}", row.device, row.metric, [ours], ours, value,
                          value, same, tolerance, min_ratio, note,
                          table_row=f"{row.name}:{row.line}")
    if same:  # the run's own spread: even its best repeats are beyond the tolerance
        comparison.passed = not (fastest / value > 1 + tolerance)
    (i0, i1), (o0, o1) = (row.grid[0][0], row.grid[0][-1]), (row.grid[1][0], row.grid[1][-1])
    failures = [] if comparison.passed else [comparison.line(tolerance, min_ratio)]
    device = re.sub(r"[^A-Za-z0-9]", "", row.device)
    return {
        "suite": "perf", "test": "test_grid_mean", "model": row.model,
        "case": f"{row.model}-{hardware}-{row.dtype}-bs{row.batch}-grid-in2^{i0}..2^{i1}"
                f"-out2^{o0}..2^{o1}-{row.metric}-vs-{device}",
        "hardware": hardware, "dtype": row.dtype, "batch": row.batch,
        "outcome": "passed" if comparison.passed else "failed",
        "passed": comparison.passed, "reason": "; ".join(failures),
        "cells": len(cells), "ours_mean": ours, "baseline_value": value,
        "ratio": comparison.slowdown, "comparisons": [asdict(comparison)]}

"""The report's view of served perf cases: load levels as series, and the rate sweep.

A served case's level is its `c<N>` clients or its `r<RATE>` request rate (capped at `c<N>`
where given); every chart keeps each level its own series. The rate sweep draws, per model,
output throughput (tokens/s) vs request rate and the p99 TTFT and p99 TPOT (ms, over
requests) vs request rate, with the goodput targets as horizontal lines and the sustainable
rate of a max-rate record (test_max_rate, or an `rmax` case) as a vertical line. Rates of
`inf` have no place on a rate axis and are left out of the sweep (they stay in the tables).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt

from harness.report.charts import svg

SWEEP = (("output_throughput", "output throughput", "tokens/s", None),
         ("p99_ttft_ms", "p99 TTFT", "ms", "goodput_ttft_ms"),
         ("p99_tpot_ms", "p99 TPOT", "ms", "goodput_tpot_ms"))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def level(row: dict) -> str:
    """' c4', ' r2 c4', ' rinf' for a served case's record; '' for any other."""
    rate, cap = row.get("request_rate"), row.get("max_concurrency")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        return f" r{rate:g}" + (f" c{cap}" if cap else "")
    clients = row.get("concurrency")
    return f" c{clients}" if clients else ""


def max_rate_apart(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the test_perf records but max-rate searches, the max-rate searches' records: those
    of test_max_rate, or of an `rmax` case of test_perf)."""
    searches = [r for r in rows if r.get("test") == "test_max_rate" or "max_rate_search" in r]
    return [r for r in rows if r.get("test") == "test_perf" and r not in searches], searches


def _series(rows: list[dict], field: str) -> dict[str, list[tuple[float, float]]]:
    found: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        rate, value = r.get("request_rate"), r.get(field)
        if _finite(rate) and _finite(value):
            cap = f" c{r['max_concurrency']}" if r.get("max_concurrency") else ""
            label = f"{r['hardware']} {r['dtype']} in{r['seqlen']}/out{r['out']}{cap}"
            found.setdefault(label, []).append((rate, value))
    return found


def _chart(title: str, unit: str, series: dict, targets: set[float],
           sustainable: list[tuple[str, float]]) -> str:
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    for label, xy in sorted(series.items()):
        xy = sorted(xy)
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=label)
    for target in sorted(targets):
        ax.axhline(target, color="#b22", linestyle="--", linewidth=0.9,
                   label=f"goodput target {target:g} {unit}")
    for label, rate in sustainable:
        ax.axvline(rate, color="#2a2", linestyle=":", linewidth=1.2,
                   label=f"sustainable {rate:.3g} req/s{label}")
    ax.set_xscale("log", base=2)
    ax.set(title=title, xlabel="request rate (requests/s)", ylabel=unit)
    ax.legend(fontsize=7, loc="best")
    return svg(fig)


def rate_charts(model: str, rows: list[dict], max_rate_rows: list[dict]) -> list[str]:
    """The rate-sweep charts of `model`'s rate cases (`rows`: its test_perf records) where
    some series has two rates or more."""
    rated = [r for r in rows if _finite(r.get("request_rate"))]
    sustainable = [(f" ({r['hardware']} {r['dtype']}"
                    + (f" c{r['max_concurrency']})" if r.get("max_concurrency") else ")"),
                    r["max_rate"]) for r in max_rate_rows
                   if r.get("model") == model and _finite(r.get("max_rate"))]
    charts = []
    for field, name, unit, target in SWEEP:
        series = _series(rated, field)
        if not any(len({x for x, _ in xy}) > 1 for xy in series.values()):
            continue
        targets = {r[target] for r in rated if target and _finite(r.get(target))}
        charts.append(_chart(f"{model}: {name} vs request rate", unit, series, targets,
                             sustainable))
    return charts

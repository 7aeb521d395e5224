"""The report's served perf: each load level its own series, and the rate sweep with the
goodput targets and the sustainable rate."""

import re

import pytest

from harness.report.render import perf_section
from harness.report.served_view import level, max_rate_apart

MODEL = "smollm2-135m"


def row(seqlen, ttft, **load):
    return {"suite": "perf", "test": "test_perf", "outcome": "passed", "model": MODEL,
            "hardware": "cpu", "dtype": "16bit", "batch": 1, "seqlen": seqlen, "out": 32,
            "case": f"{MODEL}-cpu-16bit-bs1-in{seqlen}-out32-llama-cpp", "comparisons": [],
            "forward_first_token_time(ms)": ttft, "forward_next_token_time(ms)": 20.0,
            "e2e_throughput_tokens_per_s": 30.0, **load}


def legend(chart: str) -> list[str]:
    return re.findall(r">([^<>]*(?:c1|c4|r1|r2|goodput target|sustainable)[^<>]*)<", chart)


def test_each_concurrency_level_is_its_own_first_token_series():
    rows = [row(32, 50, concurrency=1), row(128, 90, concurrency=1),
            row(32, 140, concurrency=4), row(128, 300, concurrency=4)]
    (model,) = perf_section(rows)["models"]
    (first,) = [c for c in model["charts"] if "first-token latency vs input length" in c]
    labels = legend(first)
    assert "cpu 16bit c1 bs1 out32" in labels and "cpu 16bit c4 bs1 out32" in labels
    assert level({"request_rate": 2.0, "max_concurrency": 4}) == " r2 c4"
    assert level({"request_rate": float("inf")}) == " rinf" and level({}) == ""


@pytest.mark.parametrize("test", ["test_max_rate", "test_perf"])
def test_the_rate_sweep_draws_the_targets_and_the_sustainable_rate(test):
    """The search's record comes from test_max_rate, or from an `rmax` case of test_perf."""
    targets = {"goodput_ttft_ms": 500.0, "goodput_tpot_ms": 50.0}
    rows = [row(64, 100 * rate, request_rate=rate, max_concurrency=None,
                output_throughput=40 * rate, p99_ttft_ms=200 * rate, p99_tpot_ms=10 * rate,
                **targets) for rate in (0.5, 1.0, 2.0, 4.0)]
    rows.append(row(64, 1, request_rate=float("inf"), output_throughput=999.0))
    best = {"suite": "perf", "test": test, "outcome": "passed", "model": MODEL,
            "hardware": "cpu", "dtype": "16bit", "case": f"{MODEL}-max-rate", "seqlen": 64,
            "out": 32, "batch": 1, "max_rate": 2.25, "max_concurrency": None,
            "request_rate": 2.25, "p99_ttft_ms": 9999.0, "output_throughput": 9999.0,
            "max_rate_search": "between 2.25 and 2.5", "probes": [{}, {}]}
    section = perf_section([*rows, best])
    (model,) = section["models"]
    sweep = {title: c for c in model["charts"]
             for title in re.findall(rf"{MODEL}: ([^<]*) vs request rate", c)}
    assert set(sweep) == {"output throughput", "p99 TTFT", "p99 TPOT"}
    assert "goodput target 500 ms" in legend(sweep["p99 TTFT"])
    assert "goodput target 50 ms" in legend(sweep["p99 TPOT"])
    assert not any("goodput target" in t for t in legend(sweep["output throughput"]))
    assert all("sustainable 2.25 req/s (cpu 16bit)" in legend(c) for c in sweep.values())
    assert section["max_rate"] == [best]
    measured, searches = max_rate_apart([*rows, best])
    assert searches == [best] and measured == rows  # the search is no point of the sweep

"""The perf suite's options for served ports under load: arrival rates, goodput targets,
prompt sets, the max-rate search and vLLM-format results (`harness.perf.load.ServedLoad`)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.perf.goodput import Goodput
from harness.perf.load import ServedLoad
from harness.perf.prompt_sets import output_lengths
from harness.values import check_names, positive_int, split_values

PROMPT_SETS = ("fixed", "mmlu", "ceval", "humaneval", "random")


def add_load_options(group) -> None:
    add = group.addoption
    add("--request-rate", action="append", metavar="R",
        help="perf, served ports: request arrival rates (requests/s, inf: all at once), each "
             "its own case (-r2.0), repeatable or comma-separated; --concurrency then caps "
             "the requests in flight (default: none, closed-loop clients)")
    add("--burstiness", type=float, default=1.0, metavar="B",
        help="perf, served ports: gamma shape of the arrival gaps; 1 is Poisson, lower is "
             "burstier (default: 1)")
    add("--num-requests", type=int, default=16, metavar="N",
        help="perf, served ports: requests per rate case and per max-rate probe (default: 16)")
    add("--load-seed", type=int, default=0, metavar="N",
        help="perf, served ports: seed of the arrivals, prompt draws and output lengths "
             "(default: 0)")
    add("--goodput", nargs="+", metavar="NAME:MS",
        help="perf, served ports: latency targets of request goodput, any of ttft:MS "
             "tpot:MS e2el:MS (default: none)")
    add("--prompts", default="fixed", metavar="SET",
        help="perf, served ports: fixed (every prompt the case's length), mmlu, ceval, "
             "humaneval (drawn from the real test sets: lengths follow theirs) or random "
             "(default: fixed)")
    add("--output-lengths", default="fixed", metavar="SPEC",
        help="perf, served ports: fixed (the case's out) or uniform[:R] (seeded, out x "
             "[1-R, 1+R], R default 0.5) (default: fixed)")
    add("--max-rate", action="store_true", default=False,
        help="perf, served ports: search the highest request rate at which "
             "--max-rate-percent of requests meet every --goodput target, from the first "
             "--request-rate (default: 1), beside the rate cases")
    add("--max-rate-percent", type=float, default=90.0, metavar="P",
        help="perf: share of requests the max-rate search requires within the targets "
             "(default: 90)")
    add("--save-serving-json", metavar="DIR",
        help="perf, served ports: also write each case as vLLM's serving-benchmark result "
             "JSON into DIR (default: off)")


def _rates(values: list[str] | None) -> tuple[float, ...]:
    rates = []
    for value in split_values(values, "--request-rate"):
        try:
            rate = float(value)
        except ValueError:
            rate = math.nan
        if not rate > 0:
            raise pytest.UsageError(f"--request-rate {value!r}: expected requests/s > 0 or "
                                    "inf")
        rates.append(rate)
    return tuple(dict.fromkeys(rates))


def served_load(opt) -> ServedLoad:
    """The load settings from the options; a bad value is a usage error naming it."""
    goodput = None
    if opt("--goodput"):
        try:
            goodput = Goodput.parse(opt("--goodput"))
        except ValueError as e:
            raise pytest.UsageError(f"--goodput: {e}") from None
    rated = bool(opt("--request-rate")) or opt("--max-rate")
    for option, given in (("--goodput", goodput), ("--prompts", opt("--prompts") != "fixed"),
                          ("--output-lengths", opt("--output-lengths") != "fixed"),
                          ("--burstiness", opt("--burstiness") != 1.0),
                          ("--save-serving-json", opt("--save-serving-json"))):
        if given and not rated:  # closed-loop clients send the fixed prompts
            raise pytest.UsageError(f"{option} applies to the request-rate cases; add "
                                    "--request-rate R or --max-rate")
    rates = _rates(opt("--request-rate"))
    if opt("--max-rate") and goodput is None:
        raise pytest.UsageError("--max-rate searches for the highest rate meeting the "
                                "--goodput targets; give them, e.g. --goodput ttft:500 tpot:50")
    if opt("--burstiness") <= 0:
        raise pytest.UsageError(f"--burstiness {opt('--burstiness')}: expected > 0 (1: Poisson)")
    if not 0 < opt("--max-rate-percent") <= 100:
        raise pytest.UsageError(f"--max-rate-percent {opt('--max-rate-percent')}: expected a "
                                "percentage in (0, 100]")
    check_names("--prompts", [opt("--prompts")], PROMPT_SETS)
    try:
        output_lengths(opt("--output-lengths"), 8, 1, 0)
    except ValueError as e:
        raise pytest.UsageError(f"--output-lengths: {e}") from None
    ceval = opt("--ceval-path") or opt("dataset_path")
    if opt("--prompts") == "ceval" and not ceval:
        raise pytest.UsageError("--prompts ceval: give C-Eval's directory with --ceval-path "
                                "(or --dataset-path)")
    json_dir = opt("--save-serving-json")
    return ServedLoad(
        request_rates=rates, burstiness=opt("--burstiness"),
        num_requests=positive_int("--num-requests", str(opt("--num-requests"))),
        seed=opt("--load-seed"), goodput=goodput, prompts=opt("--prompts"),
        output_lengths=opt("--output-lengths"), max_rate=opt("--max-rate"),
        max_rate_percent=opt("--max-rate-percent"),
        serving_json_dir=Path(json_dir).expanduser() if json_dir else None,
        ceval_dir=Path(ceval).expanduser() if ceval else None)

"""The served-load options: each bad value or combination is a usage error naming it, and
the grid gives one case per rate (capped by each --concurrency level given)."""

import math
from dataclasses import dataclass, field

import pytest

from harness.perf.grid import served_levels, served_pairs
from harness.perf.load import ServedLoad
from harness.perf.load_options import served_load

DEFAULTS = {"--request-rate": None, "--burstiness": 1.0, "--num-requests": 16,
            "--load-seed": 0, "--goodput": None, "--prompts": "fixed",
            "--output-lengths": "fixed", "--max-rate": False, "--max-rate-percent": 90.0,
            "--save-serving-json": None, "--ceval-path": None, "dataset_path": None}


def load(**given) -> ServedLoad:
    options = {**DEFAULTS, **{f"--{k.replace('_', '-')}": v for k, v in given.items()}}
    return served_load(options.__getitem__)


def test_rates_targets_and_sets_are_read():
    found = load(request_rate=["0.5,1", "inf", "1"], goodput=["ttft:500", "tpot:50"],
                 prompts="mmlu", output_lengths="uniform:0.25", burstiness=0.5)
    assert found.request_rates == (0.5, 1.0, math.inf)
    assert (found.goodput.ttft_ms, found.goodput.tpot_ms, found.goodput.e2el_ms) == (
        500, 50, None)
    assert (found.prompts, found.output_lengths, found.burstiness) == (
        "mmlu", "uniform:0.25", 0.5)
    assert load(max_rate=True, goodput=["e2el:900"]).max_rate


@pytest.mark.parametrize("given, message", [
    ({"request_rate": ["0"]}, "--request-rate '0': expected requests/s > 0 or inf"),
    ({"request_rate": ["fast"]}, "--request-rate 'fast': expected requests/s > 0 or inf"),
    ({"request_rate": ["1"], "goodput": ["ttft=500"]}, "--goodput: "),
    ({"goodput": ["ttft:500"]}, "--goodput applies to the request-rate cases"),
    ({"prompts": "mmlu"}, "--prompts applies to the request-rate cases"),
    ({"max_rate": True}, "--max-rate searches for the highest rate meeting the --goodput"),
    ({"request_rate": ["1"], "burstiness": 0.0}, "--burstiness 0.0: expected > 0"),
    ({"request_rate": ["1"], "prompts": "squad"}, "--prompts"),
    ({"request_rate": ["1"], "output_lengths": "normal"}, "--output-lengths: "),
    ({"request_rate": ["1"], "prompts": "ceval"}, "--prompts ceval: give C-Eval's directory"),
    ({"max_rate": True, "goodput": ["ttft:5"], "max_rate_percent": 0.0},
     "--max-rate-percent 0.0: expected a percentage in (0, 100]"),
    ({"request_rate": ["1"], "num_requests": 0}, "--num-requests"),
])
def test_bad_load_options_are_usage_errors(given, message):
    with pytest.raises(pytest.UsageError, match=None) as error:
        load(**given)
    assert message in str(error.value)


@dataclass
class Perf:
    served_load: ServedLoad = field(default_factory=ServedLoad)
    concurrency: tuple = (1, 4)
    concurrency_given: tuple = ()
    pairs: list = field(default_factory=lambda: [(32, 32), (128, 32), (64, 16)])


def test_one_case_per_rate_and_cap():
    assert served_levels(Perf()) == [("c1",), ("c4",)]
    rates = ServedLoad(request_rates=(0.5, math.inf))
    assert served_levels(Perf(rates)) == [("r0.5",), ("rinf",)]
    assert served_levels(Perf(rates, concurrency_given=(2, 8))) == [
        ("r0.5", "c2"), ("r0.5", "c8"), ("rinf", "c2"), ("rinf", "c8")]
    assert served_levels(Perf(ServedLoad(max_rate=True, prompts="mmlu"))) == [("rmax", "mmlu")]
    assert served_levels(Perf(ServedLoad(request_rates=(1.0,), max_rate=True))) == [
        ("r1.0",), ("rmax",)]


def test_a_drawn_prompt_set_runs_once_per_output_length():
    assert served_pairs(Perf()) == [(32, 32), (128, 32), (64, 16)]
    assert served_pairs(Perf(ServedLoad(prompts="humaneval"))) == [(32, 32), (64, 16)]

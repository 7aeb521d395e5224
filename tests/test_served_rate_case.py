"""The served perf cases at a request rate and the max-rate search: against an in-process
fake server (a slot semaphore and fixed sleeps, so queueing is deterministic), and end to
end against the test server of tests/served_model.py with its delays."""

import json
import math
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.baselines import OURS_FORMAT
from harness.cases import Case
from harness.perf.goodput import Goodput, Timing, goodput_comparisons
from harness.perf.load import ServedLoad
from harness.perf.served import (
    concurrency_of,
    rate_of,
    served_max_rate_case,
    served_perf_case,
)
from tests.conftest import tiny_checkpoint
from tests.served_model import running

MODEL = "alpaca2-tiny"


@cache
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint(MODEL))


@dataclass(frozen=True)
class Settings:
    """The PerfSettings fields the served cases read."""

    served_load: ServedLoad = field(default_factory=ServedLoad)
    baselines_dir: Path = Path("/nonexistent")
    warmup: int = 0
    repeats: int = 1
    tolerance: float = 0.10
    min_ratio: float | None = None
    assume_unit: str | None = None

    def baseline_names(self):
        return None


class FakeClient:
    """Streams `n` chunks of " a": `first_ms` before the first, `token_ms` between, serving
    `slots` requests at once (the others wait, inside their TTFT, as at a real server)."""

    def __init__(self, first_ms: float, token_ms: float, slots: int = 1):
        self.first_ms, self.token_ms = first_ms, token_ms
        self.slots = threading.Semaphore(slots)

    def stream(self, text, n):
        with self.slots:
            for i in range(n):
                time.sleep((self.token_ms if i else self.first_ms) / 1e3)
                yield time.perf_counter(), " a", "length" if i == n - 1 else None


class FakeRunner:
    spec = SimpleNamespace(name="fake")
    config = SimpleNamespace(max_positions=None)

    def __init__(self, client):
        self.client = client

    def describe(self):
        return {"server": "fake-server/1", "port_kind": "openai", "served_model": "fake"}


def case(*tags, out=4):
    return Case(MODEL, "cpu", "16bit", 1, 16, out, tags=tags, port="openai")


def test_case_tags_give_the_load():
    assert (rate_of(case("r2.0")), rate_of(case("rinf", "c4")), rate_of(case("c4"))) == (
        2.0, math.inf, None)
    assert (concurrency_of(case("rinf", "c4")), concurrency_of(case("r2"))) == (4, None)
    assert rate_of(case("reference")) is None and rate_of(case("rmax")) is None
    assert rate_of(case("r1e-05")) == 1e-05
    with pytest.raises(ValueError, match="tagged c<N> \\(clients\\) or r<RATE>"):
        served_perf_case(case(), FakeRunner(FakeClient(1, 1)), tokenizer(), Settings())


def test_a_rate_case_queues_at_the_server_and_counts_goodput(tmp_path):
    load = ServedLoad(num_requests=4, goodput=Goodput.parse("ttft:170 e2el:10000"),
                      serving_json_dir=tmp_path)
    result, record = served_perf_case(case("rinf"), FakeRunner(FakeClient(50, 10)),
                                      tokenizer(), Settings(load))
    saved = json.loads(Path(record["serving_json"]).read_text())
    firsts = sorted(s + t for s, t in zip(saved["start_times"], saved["ttfts"]))
    # one slot: the k-th first token waits for the k requests before, 50 + 3 * 10 ms each
    # (less 5 ms: a request's start and its TTFT are read on different clocks' ticks, a
    # thread start apart)
    for k, first in enumerate(firsts):
        assert 0.045 + 0.08 * k <= first - min(saved["start_times"]) < 0.05 + 0.08 * k + 0.06
    assert record["good_requests"] == 2 and record["good_request_pct"] == 50.0
    assert record["meets_e2el_pct"] == 100.0 and record["request_rate"] == math.inf
    assert record["max_concurrency"] is None and record["max_concurrent_requests"] == 4
    assert record["input_len_histogram"]["counts"] == [0] * 5 + [4] + [0] * 4
    assert record["output_lens"] == [4] * 4 and result.passed
    assert saved["label"] == case("rinf").id and saved["completed"] == 4
    assert saved["ttfts"] == pytest.approx([t / 1e3 for t in record["samples"][
        "first_token_ms"]])


def test_the_concurrency_tag_caps_requests_in_flight():
    """Even arrivals 20 ms apart, 90 ms a request, two slots: the fifth arrives at 80 ms and
    waits for the third to end at 180 ms."""
    load = ServedLoad(num_requests=6, burstiness=math.inf)
    _, record = served_perf_case(case("r50.0", "c2"), FakeRunner(FakeClient(60, 10, slots=6)),
                                 tokenizer(), Settings(load))
    assert record["max_concurrency"] == 2 and record["max_concurrent_requests"] == 2
    assert record["queue_s"][4] >= 0.1 - 0.005 and record["goodput_targets"] is None


def test_goodput_is_gated_against_a_stored_run_of_ours(tmp_path):
    load = ServedLoad(num_requests=8, goodput=Goodput(ttft_ms=100))
    fast = FakeRunner(FakeClient(20, 2, slots=8))
    _, stored = served_perf_case(case("rinf"), fast, tokenizer(),
                                 Settings(load, baselines_dir=tmp_path / "none"))
    (tmp_path / "perf" / "ours").mkdir(parents=True)
    (tmp_path / "perf" / "ours" / "fast.json").write_text(json.dumps(
        {"format": OURS_FORMAT, "name": "fast", "saved": "now", "run": {},
         "cases": [{**stored, "case": case("rinf").id}]}))
    settings = Settings(load, baselines_dir=tmp_path)
    result, record = served_perf_case(case("rinf"), FakeRunner(FakeClient(150, 2, slots=8)),
                                      tokenizer(), settings)
    (goodput,) = [c for c in record["comparisons"] if c["metric"] == "goodput"]
    assert (goodput["ours"], goodput["theirs"], goodput["gated"]) == (0.0, 100.0, True)
    assert not result.passed and goodput["p_value"] < 0.05
    assert any(f.startswith("requests meeting the goodput targets 0 % vs 100 %")
               for f in result.failures)


def test_goodput_comparisons_rejudge_the_stored_requests_by_todays_targets():
    stored = {"case": "x", "device": "d", "output_lens": [3] * 6,
              "samples": {"first_token_ms": [50.0] * 6, "response_s": [0.1] * 6}}
    baseline = {"b": SimpleNamespace(cases={"x": stored})}
    (same,) = goodput_comparisons("x", [True] * 6, Goodput(ttft_ms=60), "d", baseline, 0.1)
    assert same.passed and same.theirs == 100.0
    (worse,) = goodput_comparisons("x", [True] * 6, Goodput(ttft_ms=40), "d", baseline, 0.1)
    assert worse.theirs == 0.0 and worse.passed  # the stored run did worse by today's targets
    (other,) = goodput_comparisons("x", [False] * 6, Goodput(ttft_ms=60), "e", baseline, 0.1)
    assert not other.gated and other.passed and other.slowdown == math.inf
    older = {"b": SimpleNamespace(cases={"x": {**stored, "output_lens": None}})}
    assert goodput_comparisons("x", [True], Goodput(ttft_ms=60), "d", older, 0.1) == []
    assert Timing(1.0, 2.0, 3).error == ""


def test_the_max_rate_search_reports_each_probe_and_the_percentiles_there():
    lines = []
    load = ServedLoad(num_requests=8, goodput=Goodput(ttft_ms=120), max_rate_percent=75,
                      request_rates=(4.0,))
    result, record = served_max_rate_case(case("c8"), FakeRunner(FakeClient(20, 2, slots=1)),
                                          tokenizer(), Settings(load), lines.append)
    assert result.passed, result.failures
    low, high = record["max_rate_bracket"]
    assert record["max_rate"] == low and 4.0 <= low < 200 and high / low - 1 <= 0.05
    assert record["max_rate_lower_bound"] is False
    assert len(lines) == len(record["probes"]) and "max-rate probe 4 req/s: met" in lines[0]
    passed = [p for p in record["probes"] if p["passed"]]
    assert all(p["good_request_pct"] >= 75 for p in passed)
    assert record["p99_ttft_ms"] == next(p for p in passed if p["request_rate"] == low)[
        "p99_ttft_ms"]
    assert record["request_rate"] == low and record["goodput_targets"] == "ttft:120"


def test_the_max_rate_search_fails_without_targets_or_when_no_rate_meets_them():
    runner = FakeRunner(FakeClient(30, 2))
    result, _ = served_perf_case(case("rmax"), runner, tokenizer(), Settings(ServedLoad()))
    assert not result.passed and result.failures[0].startswith(
        "the max-rate search needs goodput targets: --goodput ttft:MS")
    load = ServedLoad(num_requests=1, goodput=Goodput(ttft_ms=10), request_rates=(1 / 16,))
    result, record = served_max_rate_case(case(), runner, tokenizer(), Settings(load))
    assert not result.passed and record["max_rate"] is None
    assert result.failures[0].startswith("no request rate met the goodput targets (ttft:10) "
                                         "for 90% of requests: no rate met the targets")


def test_a_rate_case_against_the_test_server_with_delays(tmp_path):
    """--first-token-ms 150 --token-ms 20 --slots 1: each request's TTFT is at least 150 ms
    and, all sent at once, the k-th waits for the k before it."""
    from harness.ports.openai import OpenAIClient
    from harness.ports.options import PortSpec
    from harness.ports.served import ServedRunner
    from models.config import get_config

    met = ServedLoad(num_requests=4, goodput=Goodput.parse("ttft:60000 e2el:120000"),
                     prompts="mmlu", serving_json_dir=tmp_path)
    missed = ServedLoad(num_requests=3, goodput=Goodput.parse("ttft:140 tpot:60000"))
    with running(tiny_checkpoint(MODEL), "--first-token-ms", "150", "--token-ms", "20",
                 "--slots", "1") as url:
        runner = ServedRunner(OpenAIClient(url), tokenizer(), get_config(MODEL),
                              spec=PortSpec("openai"), profile="16bit", logprobs=5)
        good, record = served_perf_case(case("rinf", out=6), runner, tokenizer(),
                                        Settings(met))
        bad, other = served_perf_case(case("r100.0", "c2", out=6), runner, tokenizer(),
                                      Settings(missed))
    assert good.passed and record["good_request_pct"] == 100.0 and record["completed"] == 4
    assert min(record["samples"]["first_token_ms"]) >= 150
    saved = json.loads(Path(record["serving_json"]).read_text())
    firsts = sorted(s + t for s, t in zip(saved["start_times"], saved["ttfts"]))
    for k, first in enumerate(firsts):  # the k-th first token after k requests' 150 ms
        assert first - min(saved["start_times"]) >= 0.15 * (k + 1)
    # a gap is 20 ms at the server; the client may read one chunk late, the next on time
    assert record["median_itl_ms"] >= 18 and saved["model_id"] == "served-model"
    assert record["prompts"] == "mmlu" and len(set(record["input_lens"])) > 1
    assert other["good_request_pct"] == 0.0 and other["meets_ttft_pct"] == 0.0
    assert other["meets_tpot_pct"] == 100.0 and other["max_concurrent_requests"] <= 2
    assert bad.passed  # goodput is recorded; only a stored run of ours gates it


class FailingClient(FakeClient):
    """Refuses every other request, as an endpoint that drops connections."""

    def __init__(self):
        super().__init__(5, 1, slots=4)
        self.sent = 0

    def stream(self, text, n):
        from harness.ports.openai import EndpointError

        self.sent += 1
        if self.sent % 2 == 0:
            raise EndpointError("http://x/v1: connection dropped (POST /v1/completions)")
        yield from super().stream(text, n)


def test_failed_requests_are_counted_never_timed_and_fail_the_case():
    load = ServedLoad(num_requests=4, goodput=Goodput(e2el_ms=60000))
    result, record = served_perf_case(case("rinf", "c1"), FakeRunner(FailingClient()),
                                      tokenizer(), Settings(load))
    assert (record["completed"], record["failed"]) == (2, 2)
    assert len(record["samples"]["first_token_ms"]) == 2 and record["good_requests"] == 2
    assert record["good_request_pct"] == 50.0 and record["request_errors"][1].startswith(
        "http://x/v1: connection dropped")
    assert not result.passed and result.failures[0] == (
        "2 of 4 requests failed: http://x/v1: connection dropped (POST /v1/completions)")

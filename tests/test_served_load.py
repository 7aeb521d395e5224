"""Served load's parts: arrival schedules, sending under a concurrency cap, goodput, vLLM's
result JSON, the max-rate search and the prompt sets drawn from real data."""

import json
import math
import threading
import time
from functools import cache

import numpy as np
import pytest

from harness.accuracy.datasets import DatasetError
from harness.accuracy.files import load_humaneval
from harness.perf.goodput import Goodput, goodput_metrics
from harness.perf.load import Request, arrival_offsets, length_histogram, run_load
from harness.perf.max_rate import max_rate_search
from harness.perf.prompt_sets import mmlu_prompts, output_lengths, prompt_set
from harness.perf.serving_json import serving_json, write_serving_json
from tests.conftest import tiny_checkpoint


@cache
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint("alpaca2-tiny"))


def request(ttft, e2el, tokens, error="", itl=()):
    return Request(ttft, list(itl), e2el, tokens, None if error else "length", error=error)


# --- arrivals --------------------------------------------------------------------------------

def test_arrivals_are_seeded_start_at_zero_and_never_go_back():
    first, again = arrival_offsets(50, 2.0, 1.0, seed=7), arrival_offsets(50, 2.0, 1.0, seed=7)
    assert first == again and first != arrival_offsets(50, 2.0, 1.0, seed=8)
    assert len(first) == 50 and first[0] == 0.0 and all(np.diff(first) >= 0)


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_the_mean_gap_is_one_over_the_rate_and_burstiness_sets_its_spread(burstiness):
    """Gamma gaps of shape B and scale 1/(R B): mean 1/R, squared coefficient of variation 1/B
    (B = 1: exponential, a Poisson process)."""
    gaps = np.diff(arrival_offsets(40_001, 4.0, burstiness, seed=0))
    assert gaps.mean() == pytest.approx(0.25, rel=0.03)
    assert (gaps.var() / gaps.mean() ** 2) == pytest.approx(1 / burstiness, rel=0.1)


def test_an_infinite_rate_sends_all_at_once_and_infinite_burstiness_evenly():
    assert arrival_offsets(5, math.inf, 1.0, 3) == [0.0] * 5
    assert arrival_offsets(4, 2.0, math.inf, 3) == pytest.approx([0, 0.5, 1.0, 1.5])
    for rate, burstiness in ((0, 1), (-1, 1), (1, 0), (math.nan, 1)):
        with pytest.raises(ValueError, match="expected"):
            arrival_offsets(3, rate, burstiness)


# --- sending ---------------------------------------------------------------------------------

class Sender:
    """A fake `send`: each request takes `seconds`; counts the most in flight at once."""

    def __init__(self, seconds: float):
        self.seconds, self.now, self.most = seconds, 0, 0
        self.lock = threading.Lock()

    def __call__(self, item):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(self.seconds)
        with self.lock:
            self.now -= 1
        return request(1.0, self.seconds * 1e3, 2)


def test_each_request_is_sent_at_its_arrival_and_never_before():
    offsets = [0.0, 0.15, 0.3, 0.45]
    requests, duration = run_load(Sender(0.05), "abcd", offsets)
    for r, offset in zip(requests, offsets):
        assert offset <= r.start_s < offset + 0.25  # a busy machine wakes threads late
        assert r.queue_s == pytest.approx(r.start_s - offset, abs=1e-9)
    assert duration >= 0.45 + 0.05


def test_at_most_the_cap_are_in_flight_and_the_others_wait_for_a_slot():
    sender = Sender(0.1)
    requests, duration = run_load(sender, range(8), [0.0] * 8, max_concurrency=2)
    assert sender.most == 2 and duration >= 0.4
    waits = sorted(r.queue_s for r in requests)
    assert waits[-1] >= 0.3 - 0.01  # the last pair waited for three pairs before it
    uncapped = Sender(0.3)
    run_load(uncapped, range(6), [0.0] * 6)
    assert uncapped.most == 6


def test_a_failing_send_is_raised_once_every_request_has_ended():
    ended = []

    def send(item):
        time.sleep(0.05)
        ended.append(item)
        if item == 1:
            raise RuntimeError("boom")
        return request(1, 2, 2)

    with pytest.raises(RuntimeError, match="boom"):
        run_load(send, [0, 1, 2], [0, 0, 0])
    assert sorted(ended) == [0, 1, 2]
    with pytest.raises(ValueError, match="3 items but 2 arrival offsets"):
        run_load(send, [0, 1, 2], [0, 0])


# --- goodput ---------------------------------------------------------------------------------

def test_goodput_counts_requests_meeting_every_target_and_each_share():
    requests = [request(100, 500, 5),        # ttft ok, tpot 100 ok, e2el ok
                request(600, 2600, 101),     # ttft no, tpot 20 ok, e2el no
                request(50, 1950, 11),       # ttft ok, tpot 190 no, e2el ok
                request(10, 10, 1),          # one token: tpot 0 (vLLM), all ok
                request(400, 2100, 21),      # ttft ok, tpot 85 ok, e2el no
                request(700, 3000, 2),       # none
                request(math.nan, math.nan, 0, error="HTTP 500"),  # failed: none
                request(20, 2020, 2)]        # ttft ok, tpot 2000 no, e2el no
    found = goodput_metrics(requests, Goodput.parse("ttft:500 tpot:150 e2el:2000"), 4.0)
    assert found["good_requests"] == 2 and found["request_goodput"] == 0.5
    assert found["good_request_pct"] == 25.0
    assert (found["meets_ttft_pct"], found["meets_tpot_pct"], found["meets_e2el_pct"]) == (
        62.5, 50.0, 37.5)
    assert found["goodput_targets"] == "ttft:500 tpot:150 e2el:2000"
    only = goodput_metrics(requests, Goodput(ttft_ms=500), 4.0)
    assert only["good_requests"] == 5 and "meets_tpot_pct" not in only
    assert goodput_metrics(requests, None, 4.0) == {"goodput_targets": None,
                                                   "request_goodput": None}


def test_goodput_targets_parse_any_subset_and_name_a_bad_token():
    assert Goodput.parse("ttft:500 tpot:50 e2el:2000") == Goodput(500, 50, 2000)
    assert Goodput.parse(["e2el:1500,ttft:0.5"]) == Goodput(ttft_ms=0.5, e2el_ms=1500)
    assert str(Goodput.parse("tpot:50 ttft:500")) == "ttft:500 tpot:50"
    for text, message in (("ttft500", "'ttft500': expected NAME:MS, NAME one of ttft, tpot"),
                          ("ttfb:5", "unknown metric 'ttfb'; expected one of ttft, tpot, e2el"),
                          ("ttft:abc", "'abc' is not a time; expected milliseconds > 0"),
                          ("tpot:-5", "'-5' is not a time"), ("e2el:inf", "'inf' is not a time"),
                          ("ttft:1 ttft:2", "ttft is given twice"), (" ", "no targets")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            Goodput.parse(text)


# --- vLLM's result JSON ----------------------------------------------------------------------

# The keys `vllm bench serve --save-result --save-detailed` writes for a generation benchmark
# (vllm/benchmarks/serve.py: main_async's result_json and benchmark()'s result, with
# --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 90,99).
VLLM_FIELDS = (
    "date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts",
    "request_rate", "burstiness", "max_concurrency", "duration", "completed", "failed",
    "total_input_tokens", "total_output_tokens", "request_throughput", "request_goodput",
    "output_throughput", "total_token_throughput", "input_lens", "output_lens", "ttfts",
    "itls", "latencies", "start_times", "queue_times", "generated_texts", "errors",
    "max_output_tokens_per_s", "max_concurrent_requests",
    *(f"{stat}_{metric}_ms" for metric in ("ttft", "tpot", "itl", "e2el")
      for stat in ("mean", "median", "std", "p90", "p99")))


def test_the_result_json_has_vllms_fields_and_units(tmp_path):
    requests = [Request(200.0, [10.0, 30.0], 240.0, 3, "length", "abc", start_s=0.0),
                Request(400.0, [20.0], 420.0, 2, "length", "de", start_s=0.1, queue_s=0.05),
                request(math.nan, math.nan, 0, error="dropped")]
    found = serving_json(requests, [7, 9, 11], 2.0, request_rate=math.inf, burstiness=1.0,
                         max_concurrency=None, model_id="m", tokenizer_id="t",
                         goodput=Goodput(ttft_ms=300), label="case-id")
    assert set(VLLM_FIELDS) <= set(found)
    assert found["request_rate"] == "inf" and found["num_prompts"] == 3
    assert (found["completed"], found["failed"]) == (2, 1)
    assert found["ttfts"][:2] == [0.2, 0.4] and found["latencies"][:2] == [0.24, 0.42]  # s
    assert found["itls"][:2] == [[0.01, 0.03], [0.02]]
    assert found["mean_ttft_ms"] == pytest.approx(300.0)  # ms, completed requests only
    assert found["median_itl_ms"] == pytest.approx(20.0)
    assert found["mean_tpot_ms"] == pytest.approx((20.0 + 20.0) / 2)
    assert found["output_lens"] == [3, 2, 0] and found["total_input_tokens"] == 16
    assert found["request_throughput"] == 1.0 and found["request_goodput"] == 0.5
    assert found["errors"] == ["", "", "dropped"] and found["queue_times"][1] == 0.05
    assert found["max_concurrent_requests"] == 2
    path = write_serving_json(tmp_path / "out", "case-id", found)
    assert path.name == "case-id.json" and json.loads(path.read_text())["label"] == "case-id"
    plain = serving_json(requests[:1], [7], 1.0, request_rate=2.0, burstiness=0.5,
                         max_concurrency=4, model_id="m", tokenizer_id="t", goodput=None)
    assert plain["request_goodput"] is None and plain["request_rate"] == 2.0


# --- the max-rate search ---------------------------------------------------------------------

def test_the_search_brackets_by_doubling_then_bisects_to_its_precision():
    reported = []
    found = max_rate_search(lambda rate: {"rate": rate}, lambda o: o["rate"] <= 3.3,
                            start=1.0, precision=0.05,
                            report=lambda rate, outcome: reported.append(rate))
    low, high = found.bracket
    assert found.rate == low == 3.25 and found.outcome == {"rate": 3.25}
    assert low <= 3.3 < high and high / low - 1 <= 0.05
    assert reported == [p.rate for p in found.probes] == [1, 2, 4, 3, 3.5, 3.25, 3.375]
    assert "within 5%" in found.reason


def test_the_search_halves_from_a_failing_start_and_says_when_nothing_passed():
    found = max_rate_search(lambda rate: rate, lambda rate: rate <= 0.3, start=1.0)
    assert 0.3 / 1.05 <= found.rate <= 0.3
    assert [p.rate for p in found.probes][:3] == [1.0, 0.5, 0.25]
    none = max_rate_search(lambda rate: rate, lambda rate: False, start=0.25)
    assert none.rate is None and none.outcome is None
    assert none.reason.startswith("no rate met the targets: the lowest probed, 0.0625")
    capped = max_rate_search(lambda rate: rate, lambda rate: True, start=1.0, max_probes=4)
    assert capped.rate == 8.0 and len(capped.probes) == 4
    assert capped.reason.startswith("every probed rate met the targets, up to 8")


# --- prompt sets -----------------------------------------------------------------------------

def test_mmlu_prompts_are_real_questions_drawn_by_the_seed():
    tok = tokenizer()
    one = prompt_set("mmlu", tok, 12, seed=3, length=32, out=8)
    assert one == prompt_set("mmlu", tok, 12, seed=3, length=32, out=8)
    assert one.texts != prompt_set("mmlu", tok, 12, seed=4, length=32, out=8).texts
    assert len(set(one.texts)) == 12 and set(one.texts) <= set(mmlu_prompts())
    source = [json.loads(line)["question"] for line in open(one.source, encoding="utf-8")]
    for text in one.texts:
        assert text.startswith("The following are multiple choice questions")
        assert any(q.strip() in text for q in source) and text.endswith("\nAnswer:")
    assert one.input_lens == [len(tok(t).input_ids) for t in one.texts]
    assert len(set(one.input_lens)) > 3 and one.output_lens == [8] * 12


def test_humaneval_random_and_fixed_prompts_and_their_lengths():
    tok = tokenizer()
    human = prompt_set("humaneval", tok, 200, seed=0, length=32, out=8, max_input_len=300)
    problems = {p.prompt for p in load_humaneval()}
    assert set(human.texts) <= problems and len(set(human.texts[:150])) == 150
    assert max(human.input_lens) <= 300
    rand = prompt_set("random", tok, 50, seed=1, length=40, out=8)
    assert rand == prompt_set("random", tok, 50, seed=1, length=40, out=8)
    assert 20 <= min(rand.input_lens) and max(rand.input_lens) <= 70  # 20..60 ids, re-tokenized
    fixed = prompt_set("fixed", tok, 3, seed=9, length=32, out=8)
    assert fixed.texts == prompt_set("fixed", tok, 3, seed=1, length=32, out=8).texts
    with pytest.raises(ValueError, match="prompts 'sharegpt': expected one of fixed, mmlu"):
        prompt_set("sharegpt", tok, 3, seed=0, length=32, out=8)


def test_ceval_prompts_come_from_a_directory_in_the_official_layout(tmp_path):
    (tmp_path / "ceval-exam" / "val").mkdir(parents=True)
    (tmp_path / "subject_mapping.json").write_text(json.dumps(
        {"physics": ["Physics", "物理", "STEM"]}), encoding="utf-8")
    (tmp_path / "ceval-exam" / "val" / "physics_val.csv").write_text(
        "id,question,A,B,C,D,answer\n0,光速是多少？,1,2,3,4,A\n1,重力加速度？,5,6,7,8,B\n",
        encoding="utf-8")
    found = prompt_set("ceval", tokenizer(), 3, seed=0, length=32, out=8, ceval_dir=tmp_path)
    assert all(t.startswith("以下是中国关于物理考试的单项选择题") for t in found.texts)
    assert {t.split("\n\n")[1].split("\n")[0] for t in found.texts} == {"光速是多少？",
                                                                      "重力加速度？"}
    with pytest.raises(DatasetError, match="subject_mapping.json: no such file; expected C-Eval"):
        prompt_set("ceval", tokenizer(), 3, seed=0, length=32, out=8,
                   ceval_dir=tmp_path / "absent")
    with pytest.raises(DatasetError, match="no C-Eval directory given"):
        prompt_set("ceval", tokenizer(), 3, seed=0, length=32, out=8)


def test_output_lengths_are_fixed_or_seeded_uniform_and_lengths_make_histograms():
    assert output_lengths("fixed", 32, 3, 0) == [32, 32, 32]
    lens = output_lengths("uniform", 32, 500, 5)
    assert lens == output_lengths("uniform", 32, 500, 5) and min(lens) >= 16
    assert max(lens) <= 48 and len(set(lens)) > 20
    assert set(output_lengths("uniform:0.25", 32, 200, 5)) <= set(range(24, 41))
    for bad in ("normal", "uniform:2", "uniform:x", "fixed:3"):
        with pytest.raises(ValueError, match="expected fixed, or uniform"):
            output_lengths(bad, 32, 3, 0)
    histogram = length_histogram([1, 2, 2, 10], bins=3)
    assert histogram["counts"] == [3, 0, 1] and histogram["edges"] == [1, 4, 7, 10]

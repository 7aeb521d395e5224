"""The perf harness's stored tables when damaged, the max-batch search and its memory model, and
baselines from other devices."""

import json
import random
import re

import pytest

from harness.baselines import BaselineError, perf_tables, read_perf_table
from harness.cases import Case
from harness.perf.case import perf_case
from harness.perf.gate import aggregate_rows, gate
from harness.perf.memory import Probe as MemoryProbe
from harness.perf.memory import Search, predict_max_batch, search
from harness.perf.timing import Samples, measure
from models.config import get_config
from tests.test_perf_harness import (
    CPU,
    VirtualClock,
    saved_baseline,
    settings,
    sleeping,
    table,
    tokenizer,
)


@pytest.mark.parametrize("row, message", [
    ("s,T,m,npu,d,fp16,1,,,,next_token,12,furlongs,", "row 2, column 'unit': 'furlongs' is "
                                                      "not one of ms"),
    ("s,T,m,npu,d,fp16,1,,,,next_token,1O.5,ms,", "row 2, column 'value': '1O.5' is not a "
                                                  "positive number"),
    ("s,T,m,npu,d,fp16,one,,,,next_token,10,ms,", "row 2, column 'batch': 'one' is not a "
                                                  "whole number"),
    ("s,T,m,npu,d,fp16,1,,,in=5-10,next_token,10,ms,", "row 2, column 'grid': 'in=5-10' is "
                                                       "not like"),
])
def test_a_damaged_table_names_file_row_and_column(tmp_path, row, message):
    path = table(tmp_path, [row])
    with pytest.raises(BaselineError, match="t.csv: " + message.replace("(", r"\(")) as e:
        read_perf_table(path)
    assert "\n" not in str(e.value)


def test_a_table_without_a_column_says_which(tmp_path):
    path = tmp_path / "perf" / "t.csv"
    path.parent.mkdir(parents=True)
    path.write_text("source,model\nx,y\n")
    with pytest.raises(BaselineError, match=r"t.csv: missing column 'table' \(expected columns"):
        read_perf_table(path)


def test_out_of_memory_fails_the_case_and_the_next_one_runs():
    runner = sleeping(ms=1, oom_from_batch=4)
    big, small = Case("m", "cpu", "fp32", 4, 8, 3), Case("m", "cpu", "fp32", 2, 8, 3)
    result, metrics = perf_case(big, runner, tokenizer(), CPU, settings(repeats=2))
    assert not result.passed and metrics == {}
    assert result.failures[0].startswith("out of memory at batch 4: DefaultCPUAllocator")
    result, metrics = perf_case(small, runner, tokenizer(), CPU, settings(repeats=2))
    assert result.passed and metrics["batch_size"] == 2 and "samples" in metrics


def test_the_search_brackets_the_prediction_then_bisects():
    def check(batch):
        return MemoryProbe(batch, batch <= 37, 1.0 + batch / 10)

    found = search(check, predicted=10, cap=100, max_next_ms=None)
    assert (found.found, found.bound_by) == (37, "memory")
    assert [p.batch for p in found.probes][:4] == [10, 20, 40, 30]
    assert search(check, 90, 100, None).found == 37  # a prediction too high halves down
    assert search(check, 10, 30, None) == Search(10, 30, "cap", search(check, 10, 30,
                                                                          None).probes)
    assert search(check, 10, 100, max_next_ms=3.0).bound_by == "latency"
    assert search(check, 10, 100, max_next_ms=3.0).found == 20
    assert search(lambda b: MemoryProbe(b, False, None), 10, 100, None).bound_by == "nothing fits"


def test_the_memory_model_grows_with_batch_and_length():
    cfg = get_config("qwen-tiny")
    one_gb = predict_max_batch(cfg, 25 * 2**20, 4, 128, 32, 2**30)
    assert predict_max_batch(cfg, 25 * 2**20, 4, 128, 32, 2 * 2**30) > 2 * one_gb - 2
    assert predict_max_batch(cfg, 25 * 2**20, 4, 512, 32, 2**30) < one_gb
    assert predict_max_batch(cfg, 2**31, 4, 128, 32, 2**30) == 0


def test_samples_round_trip_through_a_saved_baseline():
    samples = Samples([1.0], [2.0], [3.0], [[4.0, 5.0]], [[0.1, 0.1]], [[0.2, 0.2, 0.2]])
    assert Samples(**json.loads(json.dumps(samples.as_dict()))) == samples


def test_rows_of_other_devices_are_matched_by_the_case_and_gated_by_the_minimum_ratio(tmp_path):
    case = Case("qwen-tiny", "cpu", "fp32", 2, 8, 6)
    clock = VirtualClock()
    samples = measure(sleeping(ms=10, clock=clock), tokenizer(), clock, 2, 8, 6, repeats=3,
                      warmup=0)
    table(tmp_path, ["s.txt,T,qwen-tiny,cuda,A100,fp32,2,8,6,,next_token,2.0,ms,",
                     "s.txt,T,qwen-tiny,npu,910B3,fp32,2,8,6,,next_token,4.0,ms,",
                     "s.txt,T,qwen-tiny,npu,910B3,fp32,4,8,6,,next_token,4.0,ms,",  # batch 4
                     "s.txt,T,qwen-tiny,npu,910B3,fp16,2,8,6,,next_token,4.0,ms,"])  # fp16
    rows = perf_tables(tmp_path)
    result, comparisons = gate(case, samples, "Intel Xeon", rows, {}, 0.10, None, None)
    assert result.passed and result.metrics["baselines_compared"] == 2
    assert [(c["device"], c["same_device"], c["gated"]) for c in comparisons] == [
        ("A100", False, False), ("910B3", False, False)]
    assert [round(c["ratio"], 2) for c in comparisons] == [0.2, 0.4]  # our speed / theirs
    assert [c["table_row"] for c in comparisons] == ["t:2", "t:3"]
    result, comparisons = gate(case, samples, "Intel Xeon", rows, {}, 0.10, 0.3, None)
    assert [c["passed"] for c in comparisons] == [False, True]
    assert len(result.failures) == 1 and re.search(
        r"in baseline t:2 \(A100\): 5\.\d+x slower, speed ratio 0\.\d+ < minimum 0\.3$",
        result.failures[0])


def test_grid_means_of_other_devices_are_compared(tmp_path):
    table(tmp_path, ["s.txt,T,m,npu,910B3,fp16,1,,,in=1..1;out=1..1,next_token,10.0,ms,",
                     "s.txt,T,m,cuda,A100,fp16,1,,,in=1..1;out=1..1,next_token,5.0,ms,"])
    rows = perf_tables(tmp_path)
    cell = dict(suite="perf", test="test_perf", outcome="passed", model="m", hardware="cpu",
                dtype="fp16", batch=1, seqlen=2, out=2, device="Intel Xeon",
                **{"forward_next_token_time(ms)": 20.0, "next_token_ms_min": 19.0})
    means = aggregate_rows([cell], rows, 0.10, None, None)
    assert [m["case"] for m in means] == ["m-cpu-fp16-bs1-grid-in2^1..2^1-out2^1..2^1-next_token-"
                                          f"vs-{d}" for d in ("910B3", "A100")]
    assert [m["comparisons"][0]["same_device"] for m in means] == [False, False]
    assert [m["outcome"] for m in means] == ["passed", "passed"]  # reported, not gated
    means = aggregate_rows([cell], rows, 0.10, 0.4, None)
    assert [m["outcome"] for m in means] == ["passed", "failed"]  # speed ratios 0.5 and 0.25


def requests(levels, steps=30, seed=0):
    """Samples of one request per level, every decode step of a request near its level: the
    steps of one request are correlated, as on a machine whose load changes between
    requests."""
    jitter = random.Random(seed)
    decode = [[level * (1 + jitter.uniform(-0.01, 0.01)) for _ in range(steps)]
              for level in levels]
    return Samples([level * steps / 1e3 for level in levels], [0.1] * len(levels),
                   list(levels), decode, [[0.01] * steps for _ in levels],
                   [[0.01] * (steps + 1) for _ in levels])


def test_noise_is_judged_on_requests_not_on_their_correlated_steps(tmp_path):
    case = Case("qwen-tiny", "cpu", "fp32", 1, 8, 31)
    ours = saved_baseline(tmp_path, case, requests([8, 28, 42, 62, 82], seed=1), "this cpu")
    result, comparisons = gate(case, requests([10, 30, 50, 70, 90]), "this cpu", [], ours,
                               0.10, None, None)
    next_token = next(c for c in comparisons if c["metric"] == "next_token")
    assert next_token["slowdown"] > 1.10  # the medians differ by more than the tolerance,
    assert next_token["p_value"] > 0.05  # but 5 requests against 5 do not separate them
    assert result.passed, result.failures


def test_too_few_requests_to_separate_noise_are_said_and_fail(tmp_path):
    case = Case("qwen-tiny", "cpu", "fp32", 1, 8, 31)
    ours = saved_baseline(tmp_path, case, requests([10, 11], seed=1), "this cpu")
    result, comparisons = gate(case, requests([30, 31]), "this cpu", [], ours, 0.10, None, None)
    assert not result.passed and len(result.failures) == 3
    assert all("2 vs 2 requests cannot reach p < 0.05" in c["note"] for c in comparisons)
    assert "x slower > 1.10 tolerance, Mann-Whitney p=0.167 (2 vs 2 requests cannot reach " \
        "p < 0.05" in result.failures[1]
    assert gate(case, requests([10, 10.5]), "this cpu", [], ours, 0.10, None, None)[0].passed


def test_the_machine_load_is_recorded_with_every_run_and_case():
    from harness.results import environment

    info = environment()
    assert info["load_1m"] >= 0 and info["cpu_count"] >= 1
    result, metrics = perf_case(Case("m", "cpu", "fp32", 1, 8, 3), sleeping(ms=1),
                                tokenizer(), CPU, settings(repeats=2))
    assert result.passed and metrics["load_1m"] >= 0 and metrics["cpu_count"] >= 1


def test_the_search_reports_each_probe_as_it_goes():
    seen = []
    found = search(lambda b: MemoryProbe(b, b <= 37, 1.0, peak_memory_bytes=b * 2**20), 10, 100,
                   None, progress=seen.append)
    assert seen == found.probes and len(seen) > 3
    assert [p.batch for p in seen][:3] == [10, 20, 40] and seen[2].peak_memory_bytes == 40 * 2**20

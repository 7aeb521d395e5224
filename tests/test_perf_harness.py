"""The perf harness with dummy runners: timing loop, gate, baselines, grid means, OOM."""

import json
import re
from contextlib import contextmanager
from functools import cache, partial

import pytest
import torch

from harness.baselines import perf_tables
from harness.cases import Case
from harness.devices import Timing, get_backend
from harness.perf.gate import aggregate_rows, gate
from harness.perf.options import DEFAULT_PAIRS, PerfSettings
from harness.perf.timing import SEED_COLUMNS, measure, summary
from harness.testing import DummyRunner
from tests.conftest import tiny_checkpoint

CPU = get_backend("cpu")
VOCAB = 49152
# Costs `ms` per prefill and per decode step; its logits are ready zeros.
sleeping = partial(DummyRunner, VOCAB, pattern=False)


@cache
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint("smollm2-135m"))


class VirtualClock:
    """A backend whose timer reads a clock that only the runner advances: timings in these
    tests are exact, whatever else the machine is doing."""

    name = "cpu"

    def __init__(self):
        self.now = 0.0

    def torch_device(self):
        return torch.device("cpu")

    @contextmanager
    def timer(self):
        timing, start = Timing(), self.now
        yield timing
        timing.ms = self.now - start


def settings(**changes) -> PerfSettings:
    from harness.baselines import BASELINES_DIR

    base = dict(batches=[1], pairs=DEFAULT_PAIRS, repeats=5, warmup=1, compile=False,
                reference=False, tolerance=0.10, min_ratio=None, baselines=[],
                assume_unit=None, max_batch=False, memory_limit=None, max_next_token_ms=None,
                max_batch_cap=64, baselines_dir=BASELINES_DIR)
    return PerfSettings(**{**base, **changes})


def test_the_loop_times_every_phase_and_keeps_every_sample():
    runner = sleeping(ms=2)
    samples = measure(runner, tokenizer(), CPU, batch=3, in_len=17, out_len=5, repeats=4,
                      warmup=2)
    assert runner.calls.count(("prefill", (3, 17))) == 6  # exactly 17 tokens, warm-ups run
    assert runner.calls.count(("decode", (3,))) == 6 * 4
    assert len(samples.response_s) == len(samples.first_token_ms) == 4  # warm-ups not kept
    assert all(len(steps) == 4 for steps in samples.decode_ms + samples.pre_ms)
    assert all(len(steps) == 5 for steps in samples.post_ms)  # every new token detokenised
    assert all(1.9 < ms for steps in samples.decode_ms for ms in steps)
    row = summary(samples, 3, 17, 5)
    assert list(row)[:8] == list(SEED_COLUMNS)
    assert row["e2e_throughput_tokens_per_s"] == pytest.approx(3 * 5 / row["ResponseTime(s)"])
    assert row["decode_step_ms_p90"] >= row["decode_step_ms_median"] >= row["decode_step_ms_min"]


def saved_baseline(tmp_path, case, samples, device):
    ours = tmp_path / "perf" / "ours"
    ours.mkdir(parents=True)
    (ours / "base.json").write_text(json.dumps({
        "format": 1, "name": "base", "saved": "now", "run": {},
        "cases": [{"case": case.id, "device": device, "samples": samples.as_dict()}]}))
    from harness.baselines import ours_baselines

    return ours_baselines(tmp_path)


@pytest.mark.parametrize("slower, passes", [(1.0, True), (1.02, True), (1.20, False)])
def test_a_run_slowed_by_20_percent_fails_and_by_2_percent_passes(tmp_path, slower, passes):
    case = Case("qwen-tiny", "cpu", "fp32", 2, 8, 6)
    clock = VirtualClock()

    def run(ms, seed):
        return measure(sleeping(ms=ms, clock=clock, seed=seed), tokenizer(), clock, 2, 8, 6,
                       repeats=5, warmup=1)

    ours = saved_baseline(tmp_path, case, run(25, seed=1), "this cpu")
    candidate = run(25 * slower, seed=2)
    result, comparisons = gate(case, candidate, "this cpu", [], ours, 0.10, None, None)
    assert result.passed == passes, result.failures
    assert {c["metric"] for c in comparisons} == {"first_token", "next_token", "e2e_throughput"}
    if not passes:
        assert len(result.failures) == 3
        assert re.match(r"next-token latency [\d.]+ ms vs [\d.]+ ms", result.failures[1]) and \
            "in baseline base (same device): 1.2" in result.failures[1] and \
            "x slower > 1.10 tolerance, Mann-Whitney p=" in result.failures[1]
    # another device: the ratio is reported, and gated only with a minimum ratio
    result, comparisons = gate(case, candidate, "other cpu", [], ours, 0.10, None, None)
    assert result.passed and not any(c["gated"] for c in comparisons)
    assert gate(case, candidate, "other cpu", [], ours, 0.10, 0.5, None)[0].passed
    failed = gate(case, candidate, "other cpu", [], ours, 0.10, 2.0, None)[0]
    assert "speed ratio" in failed.failures[0] and "< minimum 2.0" in failed.failures[0]


def table(tmp_path, rows, name="t"):
    header = ("source,table,model,hardware,device,dtype,batch,input_len,output_len,grid,metric,"
              "value,unit,note")
    path = tmp_path / "perf" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_table_row_gates_against_the_runs_own_spread(tmp_path):
    case = Case("qwen-7b", "npu", "fp16", 2, 16, 6)
    clock = VirtualClock()
    samples = measure(sleeping(ms=10, clock=clock), tokenizer(), clock, 2, 16, 6, repeats=3,
                      warmup=0)
    table(tmp_path, ["s.txt,T,qwen-7b,npu,910B3,fp16,2,16,6,,next_token,8.0,ms,",
                     "s.txt,T,qwen-7b,npu,A100,fp16,2,16,6,,first_token,20.0,ms,",
                     "s.txt,T,qwen-7b,npu,910B3,fp16,2,16,6,,e2e_throughput,1.0,tokens/s,"])
    rows = perf_tables(tmp_path)
    result, comparisons = gate(case, samples, "Ascend910B3", rows, {}, 0.10, None, None)
    assert not result.passed and len(result.failures) == 1  # 10 ms vs 8 ms on the same device
    assert result.failures[0].startswith("next-token latency 1") and "vs 8 ms" in result.failures[0]
    assert {c["same_device"] for c in comparisons} == {True, False}
    assert gate(case, samples, "Ascend910B3", rows, {}, 0.5, None, None)[0].passed


def test_an_ambiguous_unit_is_used_only_when_stated(tmp_path):
    case = Case("alpaca2-7b", "cuda", "fp16", 1, 16, 6)
    clock = VirtualClock()
    samples = measure(sleeping(ms=10, clock=clock), tokenizer(), clock, 1, 16, 6, repeats=3,
                      warmup=0)
    table(tmp_path, ["s.txt,T,alpaca2-7b,cuda,A100,fp16,1,,,,next_token,11.25,ambiguous,"])
    rows = perf_tables(tmp_path)
    result, comparisons = gate(case, samples, "NVIDIA A100", rows, {}, 0.10, None, None)
    assert comparisons == [] and "unit is ambiguous in the source; pass --assume-unit" in \
        result.metrics["baselines_unusable"]
    result, comparisons = gate(case, samples, "NVIDIA A100", rows, {}, 0.10, None, "ms")
    assert [c["theirs"] for c in comparisons] == [11.25] and result.passed
    _, comparisons = gate(case, samples, "NVIDIA A100", rows, {}, 0.10, None, "tokens/s")
    assert comparisons[0]["theirs"] == pytest.approx(1e3 / 11.25)


def test_the_shipped_tables_hold_every_seed_table():
    rows = perf_tables()
    by_name = {}
    for row in rows:
        by_name.setdefault(row.name, []).append(row)
    qwen = by_name["003_qwen-7b_910b3"]
    assert len([r for r in qwen if r.unit != "none"]) == 16 * 3
    assert len(by_name["003_qwen-7b_310p3"]) == 36
    # the document's "暂无数据" (no data yet) sections: its 910B3 max batch and its GPU
    assert {(r.table, r.hardware) for r in qwen if r.unit == "none"} == {
        ("910B3 NPU max batch", "npu"), ("910B3 GPU performance", "cuda")}
    assert len(by_name["003_qwen-7b_310p3_max-batch"]) == 4 * 4
    assert {r.unit for r in by_name["002_alpaca2-7b"]} == {"ambiguous"}
    assert [r.metric for r in by_name["004_starcoder-15b"]] == ["none"]  # none published
    falcon = by_name["000_falcon-7b"]
    assert all(r.grid and len(r.grid_cells()) == 36 for r in falcon)
    assert all("2^5~2^10 average" in r.note and "36 cases" not in r.note
               for r in falcon + by_name["001_bloom-7b1"] if r.grid)
    assert {(r.device, r.metric, r.value) for r in falcon} >= {("910B3", "first_token", 59.18),
                                                               ("A100", "next_token", 10.73)}
    assert all(r.source.endswith(".txt") for r in rows)


def test_grid_means_compare_a_complete_grid_only(tmp_path):
    table(tmp_path, ["s.txt,T,m,npu,910B3,fp16,1,,,in=1..2;out=1..1,next_token,10.0,ms,"])
    rows = perf_tables(tmp_path)
    cell = dict(suite="perf", test="test_perf", outcome="passed", model="m", hardware="npu",
                dtype="fp16", batch=1, out=2, device="Ascend910B3")
    records = [{**cell, "seqlen": 2, "forward_next_token_time(ms)": 12.0,
                "next_token_ms_min": 11.5}]
    assert aggregate_rows(records, rows, 0.10, None, None) == []  # in=4 is missing
    records.append({**cell, "seqlen": 4, "forward_next_token_time(ms)": 14.0,
                    "next_token_ms_min": 13.5})
    [mean] = aggregate_rows(records, rows, 0.10, None, None)
    assert mean["ours_mean"] == 13.0 and mean["cells"] == 2 and mean["outcome"] == "failed"
    assert mean["case"] == "m-npu-fp16-bs1-grid-in2^1..2^2-out2^1..2^1-next_token-vs-910B3"
    [mean] = aggregate_rows(records, rows, 0.5, None, None)
    assert mean["outcome"] == "passed"

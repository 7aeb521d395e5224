"""Served load through the perf suite itself (pytester on a copy of the suites, the test
server of tests/served_model.py with fixed delays): one case per rate, goodput recorded,
vLLM's result JSON written, and the max-rate search reported."""

import json

import pytest

from tests.conftest import tiny_checkpoint
from tests.served_model import running

pytest_plugins = ["pytester"]

MODEL = "alpaca2-tiny"
PERF = ("copied_suites/perf", "--model", MODEL, "--port", f"{MODEL}=openai",
        "--seqlen-in-pair", "16", "--seqlen-out-pair", "4", "--warmup", "0",
        "--perf-baseline", "none")


def records(pytester, run_id: str) -> dict[str, dict]:
    path = pytester.path / "reports" / run_id / "records-main.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["case"]: r for r in rows}


@pytest.fixture(scope="module")
def model_dir():
    return tiny_checkpoint(MODEL)


def test_a_rate_sweep_runs_a_case_per_rate_with_goodput_and_vllm_json(suites, model_dir):
    out = suites.path / "vllm-json"
    with running(model_dir, "--first-token-ms", "30", "--token-ms", "5") as url:
        result = suites.runpytest(*PERF, "--endpoint", url, "--run-id", "rates",
                                  "--request-rate", "4,inf", "--concurrency", "2",
                                  "--num-requests", "4", "--prompts", "mmlu",
                                  "--goodput", "ttft:60000", "e2el:60000",
                                  "--save-serving-json", str(out))
    result.assert_outcomes(passed=2)
    rows = records(suites, "rates")
    for rate in ("4.0", "inf"):
        row = rows[f"{MODEL}-cpu-16bit-bs1-in16-out4-openai-r{rate}-c2-mmlu"]
        assert row["completed"] == 4 and row["max_concurrency"] == 2
        assert row["median_ttft_ms"] >= 30  # the server's first-token delay
        assert row["good_request_pct"] == 100 and row["request_goodput"] > 0
        assert len(set(row["input_lens"])) > 1  # MMLU questions, not one fixed length
        saved = json.loads(open(row["serving_json"]).read())
        assert saved["completed"] == 4 and saved["max_concurrency"] == 2
        assert len(saved["ttfts"]) == 4 and saved["mean_ttft_ms"] >= 30
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{MODEL}-cpu-16bit-bs1-in16-out4-openai-r{rate}-c2-mmlu.json" for rate in ("4.0", "inf"))


def test_the_max_rate_search_prints_its_probes_and_fails_when_no_rate_meets(suites,
                                                                            model_dir):
    with running(model_dir, "--first-token-ms", "50") as url:
        result = suites.runpytest(*PERF, "--endpoint", url, "--run-id", "maxrate",
                                  "--max-rate", "--request-rate", "8", "--num-requests", "2",
                                  "--goodput", "ttft:1")
    result.assert_outcomes(passed=1, failed=1)  # the r8.0 case beside the search measures
    result.stdout.fnmatch_lines(["*max-rate probe 8 req/s: missed*"])
    rows = records(suites, "maxrate")
    assert rows[f"{MODEL}-cpu-16bit-bs1-in16-out4-openai-r8.0"]["good_request_pct"] == 0
    row = rows[f"{MODEL}-cpu-16bit-bs1-in16-out4-openai-rmax"]
    assert row["max_rate"] is None and row["probes"][0]["passed"] is False
    assert "no request rate met the goodput targets (ttft:1" in row["reason"]

"""The pytest plugin, driven through pytester with the project's own conftest."""

import csv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["pytester"]

SUITE = """
import pytest
from harness.cases import Case

CASES = [Case("qwen-tiny", "cpu", "fp32", b, 8) for b in (1, 2, 3, 4)]

@pytest.mark.parametrize("case", CASES, ids=str)
def test_records(case, record):
    record(case, case.batch != 3, value=case.batch)
    assert case.batch != 3

def test_npu(runner_pool):
    runner_pool.ported(Case("qwen-tiny", "npu", "fp16", 1, 8))

def test_missing_weights(runner_pool):
    runner_pool.ported(Case("qwen-7b", "cpu", "fp32", 1, 8))
"""


@pytest.fixture
def suite(pytester):
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    (pytester.path / "demo").mkdir()  # the suite is named after its directory
    (pytester.path / "demo" / "test_suite.py").write_text(SUITE)
    return pytester


@pytest.mark.parametrize("args, message", [
    (["--model", "qwen-8b"], "--model 'qwen-8b' is unknown; valid: falcon-7b"),
    (["--model-path", "llama-7b=/x"], "--model-path 'llama-7b' is unknown; valid:"),
    (["--model-path", "qwen-7b"], "--model-path 'qwen-7b': expected NAME=DIR"),
    (["--hardware", "tpu"], "--hardware 'tpu' is unknown; valid: cpu, cuda, npu"),
    (["--dtype", "fp32,int4"], "--dtype 'int4' is unknown; valid: fp32, bf16, fp16"),
    (["--batch", "0"], "--batch '0': expected a positive integer"),
    (["--seqlen", "32,x"], "--seqlen 'x': expected a positive integer"),
])
def test_bad_options_are_usage_errors(suite, args, message):
    result = suite.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_unavailable_hardware_and_weights_skip_with_the_reason(suite):
    result = suite.runpytest("-rs", "--results-dir", "out", "--run-id", "r1")
    result.assert_outcomes(passed=3, failed=1, skipped=2)
    result.stdout.fnmatch_lines(["*npu: torch_npu not importable*",
                                 "*qwen-7b: no weights; pass --model-path qwen-7b=*"])


def test_model_path_to_the_wrong_model_fails_every_test_of_it(suite, make_tiny):
    from models.config import get_config

    path = make_tiny(get_config("falcon-tiny"))
    result = suite.runpytest("-k", "missing_weights", "--model-path", f"qwen-7b={path}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*--model-path qwen-7b: *not a qwen-7b checkpoint: family*"])


def test_required_hardware_fails_instead(suite):
    result = suite.runpytest("--require-hardware", "-k", "npu")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*npu required but unavailable: torch_npu not importable*"])


def test_xdist_workers_write_their_own_files_and_the_controller_merges(suite):
    result = suite.runpytest_subprocess("-n", "2", "-k", "records", "--results-dir", "out",
                                        "--run-id", "x")
    result.assert_outcomes(passed=3, failed=1)
    run_dir = suite.path / "out" / "x"
    assert {p.name for p in run_dir.glob("records-*.jsonl")} == {"records-gw0.jsonl",
                                                                 "records-gw1.jsonl"}
    rows = list(csv.DictReader(open(run_dir / "demo.csv")))
    expected = [f"qwen-tiny-cpu-fp32-bs{b}-in8" for b in (1, 2, 3, 4)]
    assert sorted(r["case"] for r in rows) == expected
    assert (run_dir / "run.json").exists()
    result.stdout.fnmatch_lines(["*llmgate results*", "*bs3-in8*False*"])


def test_resume_skips_what_the_run_already_recorded(suite):
    first = suite.runpytest("-k", "records and not bs4", "--results-dir", "out", "--run-id", "r")
    first.assert_outcomes(passed=2, failed=1)
    again = suite.runpytest("-k", "records", "--results-dir", "out", "--run-id", "r", "--resume",
                            "-rs")
    again.assert_outcomes(passed=1, skipped=2, errors=1)  # the bs3 failure is not forgotten
    again.stdout.fnmatch_lines(["*recorded as failed in run r*",
                                "*already recorded in run r*"])
    rows = list(csv.DictReader(open(suite.path / "out" / "r" / "demo.csv")))
    assert len(rows) == 4


def test_resume_needs_a_run_id(suite):
    result = suite.runpytest("--resume")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--resume needs the --run-id*"])

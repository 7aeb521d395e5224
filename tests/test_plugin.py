"""The pytest plugin, driven through pytester with the project's own conftest."""

import csv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["pytester"]

SUITE = """
import pytest
from harness.cases import Case
from harness.verdicts import verdict

def cases(*seqlens, model="qwen-tiny", hardware="cpu"):
    return [Case(model, hardware, "fp32", 1, s) for s in seqlens]

@pytest.mark.parametrize("case", [Case("qwen-tiny", "cpu", "fp32", b, 8) for b in (1, 2, 3, 4)],
                         ids=str)
def test_records(case, record):
    result = verdict(["bs3 is too far"] if case.batch == 3 else [], 1.0, value=case.batch)
    record(result)
    assert result.passed, f"{case}: {result.message()}"

@pytest.mark.parametrize("case", cases(8, hardware="npu"), ids=str)
def test_npu(case, runner_pool):
    runner_pool.ported(case)

@pytest.mark.parametrize("case", cases(8, model="qwen-7b"), ids=str)
def test_missing_weights(case, runner_pool):
    runner_pool.ported(case)

@pytest.mark.parametrize("case", cases(9), ids=str)
def test_raises(case):
    raise RuntimeError("engine exploded\\nsecond line")

@pytest.fixture
def broken():
    raise OSError("fixture broke")

@pytest.mark.parametrize("case", cases(10), ids=str)
def test_setup_error(case, broken):
    pass

@pytest.mark.parametrize("case", cases(11), ids=str)
def test_forgets_to_assert(case, record):
    record(verdict(["too far"], 1.0))

def test_selection(llmgate):
    print("MODELS", ",".join(llmgate.models))
"""


@pytest.fixture
def suite(pytester):
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    (pytester.path / "demo").mkdir()  # the suite is named after its directory
    (pytester.path / "demo" / "test_suite.py").write_text(SUITE)
    return pytester


def rows(pytester, run_id):
    return {(r["test"], r["case"]): r
            for r in csv.DictReader(open(pytester.path / "reports" / run_id / "demo.csv"))}


@pytest.mark.parametrize("args, message", [
    (["--model", "qwen-8b"], "--model 'qwen-8b' is unknown; valid: falcon-7b"),
    (["--model-path", "llama-7b=/x"], "--model-path llama-7b=/x: 'llama-7b' is not a registered "
     "model"),
    (["--model-path", "qwen-7b"], "--model-path 'qwen-7b': expected NAME=DIR"),
    (["--model-path", "qwen-7b=/no/such/dir"], "--model-path qwen-7b=/no/such/dir: directory "
                                                "not found"),
    (["--hardware", "tpu"], "--hardware 'tpu' is unknown; valid: cpu, cuda, npu"),
    (["--dtype", "fp32,int4"], "--dtype 'int4' is unknown; valid: fp32, bf16, fp16"),
    (["--batch", "0"], "--batch '0': expected an integer >= 1"),
    (["--batch", "²"], "--batch '²': expected an integer >= 1"),
    (["--seqlen", "32,x"], "--seqlen 'x': expected an integer >= 1"),
    (["--decode-steps", "-3"], "--decode-steps '-3': expected an integer >= 1"),
    (["--batch", ""], "--batch '': an empty value; expected comma-separated values"),
    (["--batch", "1,,4"], "--batch '1,,4': an empty value; expected comma-separated values"),
    (["--dtype", ""], "--dtype '': an empty value*"),
    (["--model", ""], "--model '': an empty value*"),
    (["--task", ""], "--task '': an empty value*"),
    (["--accuracy-baseline", ""], "--accuracy-baseline '': an empty value*"),
    (["--batch", "99999999999999999999"], "--batch '99999999999999999999': expected an integer "
                                          ">= 1 and <= 65536"),
    (["--max-batch", "--memory-limit", "400"], "--memory-limit '400': 400 bytes cannot hold a "
                                               "model; give a unit, e.g. 400MiB"),
    (["--memory-limit", "1GiB"], "--memory-limit applies to the max-batch search only; add "
                                 "--max-batch"),
    (["--max-next-token-ms", "50"], "--max-next-token-ms applies to the max-batch search only; "
                                    "add --max-batch"),
    (["--run-id", "../../escape"], "--run-id '../../escape': expected a name of letters, "
                                   "digits, '.', '_' and '-', not starting with '.'"),
    (["--run-id", "a b/\u00fc"], "--run-id 'a b/\u00fc': expected a name of letters*"),
    (["--run-id=.."], "--run-id '..': expected a name of letters*"),
    (["--run-id", ""], "--run-id '': expected a name of letters*"),
    (["--run-id", "latest"], "--run-id 'latest': reserved for the link to the newest run*"),
    (["--port-profile", "8bit"], "--port-profile '8bit' is unknown; valid: auto, *"),
    (["--accuracy-runner", "gpu"], "--accuracy-runner 'gpu' is unknown; valid: ported, "
                                   "reference"),
    (["--assume-unit", "s"], "--assume-unit 's' is unknown; valid: ms, tokens/s"),
    (["--task", "mmlu-clozed"], "--task 'mmlu-clozed' is unknown; valid: *mmlu-cloze*"),
    (["--model", "falcon-tiny", "--seqlen", "508"],
     "falcon-tiny has 512 positions; --seqlen 508 + --decode-steps 8 = 516 tokens do not fit"),
    (["--model", "starcoder-tiny", "--seqlen", "32,600", "--dtype", "bf16"],
     "starcoder-tiny has 512 positions; --seqlen 600 + --decode-steps 8 = 608 tokens*"),
    (["--seqlen", "100000"], "falcon-tiny has 512 positions; --seqlen 100000 + --decode-steps*"),
    (["--model", "falcon-tiny", "--seqlen", "490", "--dtype", "fp32"],
     "falcon-tiny has 512 positions; --seqlen 490 + 32 generated tokens (greedy generation) = "
     "522 tokens do not fit"),
])
def test_bad_options_are_usage_errors(suite, args, message):
    result = suite.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])
    assert "usage:" not in result.stderr.str()  # one line, not argparse's usage text


def test_a_model_path_needs_its_model_selected(suite, make_tiny):
    from models.config import get_config

    path = make_tiny(get_config("falcon-tiny"))
    result = suite.runpytest("--model", "qwen-tiny", "--model-path", f"falcon-tiny={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--model-path falcon-tiny=... is given but --model does not "
                                 "select falcon-tiny; add --model falcon-tiny*"])
    alone = suite.runpytest("-s", "-k", "selection", "--model-path", f"falcon-tiny={path}")
    alone.stdout.fnmatch_lines(["*MODELS falcon-tiny"])  # a path alone selects its model
    default = suite.runpytest("-s", "-k", "selection")
    default.stdout.fnmatch_lines(["*MODELS falcon-tiny,bloom-tiny,alpaca2-tiny,qwen-tiny,"
                                  "starcoder-tiny,smollm2-135m"])


def test_a_model_path_to_another_model_is_a_usage_error(suite, make_tiny):
    from models.config import get_config

    path = make_tiny(get_config("falcon-tiny"))
    result = suite.runpytest("--model-path", f"qwen-7b={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--model-path qwen-7b: *not a qwen-7b checkpoint: family*"])


@pytest.mark.parametrize("option", ["--results-dir", "--cache-dir"])
def test_a_directory_option_that_is_a_file_is_a_usage_error(suite, option):
    (suite.path / "afile").write_text("x")
    result = suite.runpytest(option, "afile")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option} afile: exists and is not a directory*"])


def test_every_outcome_leaves_one_record_that_agrees_with_pytest(suite):
    result = suite.runpytest("-rs", "-k", "not selection", "--run-id", "r1")
    result.assert_outcomes(passed=3, failed=3, skipped=2, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    found = rows(suite, "r1")
    outcome = {key: row["outcome"] for key, row in found.items()}
    assert outcome == {
        **{("test_records", f"qwen-tiny-cpu-fp32-bs{b}-in8"): "passed" for b in (1, 2, 4)},
        ("test_records", "qwen-tiny-cpu-fp32-bs3-in8"): "failed",
        ("test_npu", "qwen-tiny-npu-fp32-bs1-in8"): "skipped",
        ("test_missing_weights", "qwen-7b-cpu-fp32-bs1-in8"): "skipped",
        ("test_raises", "qwen-tiny-cpu-fp32-bs1-in9"): "error",  # an exception, not a check
        ("test_setup_error", "qwen-tiny-cpu-fp32-bs1-in10"): "error",
        ("test_forgets_to_assert", "qwen-tiny-cpu-fp32-bs1-in11"): "failed",
    }
    reason = {key[0]: row["reason"] for key, row in found.items()}
    assert reason["test_raises"] == "RuntimeError: engine exploded"
    assert reason["test_setup_error"] == "OSError: fixture broke"
    assert reason["test_npu"].startswith("npu: torch_npu not importable")
    assert reason["test_missing_weights"].startswith("qwen-7b: no weights; pass --model-path")
    assert reason["test_forgets_to_assert"] == "too far"
    assert found[("test_records", "qwen-tiny-cpu-fp32-bs3-in8")]["reason"] == "bs3 is too far"
    result.stdout.fnmatch_lines(["*llmgate results*", "demo: 3 passed, 2 failed, 2 error, "
                                 "2 skipped", "*bs3-in8*failed*bs3 is too far*"])


def test_a_green_run_has_only_passing_records(suite):
    result = suite.runpytest("-k", "records and not bs3", "--run-id", "ok")
    assert result.ret == pytest.ExitCode.OK
    assert {row["outcome"] for row in rows(suite, "ok").values()} == {"passed"}


def test_a_run_that_measured_nothing_fails(suite):
    result = suite.runpytest("-k", "npu or missing", "--run-id", "none")
    result.assert_outcomes(skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    run = list(csv.DictReader(open(suite.path / "reports" / "none" / "run.csv")))
    assert run[0]["reason"] == "no case was measured: all 2 selected were skipped"


def test_required_hardware_fails_instead(suite):
    result = suite.runpytest("--require-hardware", "-k", "npu", "--run-id", "hw")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*npu required but unavailable: torch_npu not importable*"])
    assert rows(suite, "hw")[("test_npu", "qwen-tiny-npu-fp32-bs1-in8")]["outcome"] == "failed"

"""The perf suite itself, through pytester on a copy of the suites (tiny models, short runs)."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from harness.perf.timing import SEED_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
SHORT = ("--repeats", "2", "--warmup", "0")

pytest_plugins = ["pytester"]


def read(pytester, run_id, name):
    return list(csv.DictReader(open(pytester.path / "reports" / run_id / name)))


def test_qwen_bs8_runs_exactly_the_batch_8_qwen_cases(suites):
    result = suites.runpytest("copied_suites/perf", "-k", "qwen and bs8", "-rs", *SHORT,
                              "--run-id", "q8")
    outcomes = result.parseoutcomes()
    # Both qwen-tiny cases ran; a loaded machine may make one slower than the shipped
    # baseline of ours, which is a verdict, not an error.
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 2, outcomes
    assert outcomes["skipped"] == 2 and "error" not in outcomes
    result.stdout.fnmatch_lines(["*qwen-7b: no weights; pass --model-path qwen-7b=*"])
    with open(suites.path / "reports" / "q8" / "performance_cpu_qwen-tiny_fp32.csv") as f:
        header = next(csv.reader(f))
    assert header[:8] == list(SEED_COLUMNS)
    rows = {r["case"]: r for r in read(suites, "q8", "perf.csv")}
    assert set(rows) == {"qwen-tiny-cpu-fp32-bs8-in32-out32", "qwen-tiny-cpu-fp32-bs8-in128-out32",
                         "qwen-7b-cpu-fp32-bs8-in32-out32", "qwen-7b-cpu-fp32-bs8-in128-out32"}
    for row in rows.values():
        assert row["outcome"] in ("passed", "skipped") or "in baseline dev-cpu" in row["reason"]
    measured = rows["qwen-tiny-cpu-fp32-bs8-in32-out32"]
    assert float(measured["baselines_compared"]) >= 1  # the shipped baseline of ours
    assert float(measured["forward_next_token_time(ms)"]) > 0
    assert float(measured["weight_bytes"]) > float(measured["streamed_weight_bytes"]) > 0


def test_the_seeds_spelling_and_power_ranges(suites):
    result = suites.runpytest("copied_suites/perf", "--model", "falcon-tiny", "--batch", "1",
                              "--seqlen_in_range", "5", "6", "--seqlen_out_range", "2", "2",
                              "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*test_perf?falcon-tiny-cpu-fp32-bs1-in32-out4?",
                                 "*test_perf?falcon-tiny-cpu-fp32-bs1-in64-out4?",
                                 "2/4 tests collected (2 deselected)*"])
    pairs = suites.runpytest("copied_suites/perf", "--model", "falcon-tiny", "--batch", "1",
                             "--seqlen_in_pair", "16", "24", "--seqlen-out-pair", "4,2",
                             "--collect-only", "-q")
    pairs.stdout.fnmatch_lines(["*in16-out4?", "*in24-out2?"])


def test_the_reference_through_the_same_loop(suites):
    result = suites.runpytest("copied_suites/perf", "--model", "starcoder-tiny", "--batch", "2",
                              "--seqlen-in-pair", "16", "--seqlen-out-pair", "4",
                              "--perf-reference", "--perf-baseline", "none", *SHORT,
                              "--run-id", "ref")
    result.assert_outcomes(passed=1)
    [row] = read(suites, "ref", "perf.csv")
    for phase in ("first_token", "next_token", "pre", "post", "response"):
        assert float(row[f"ratio_{phase}"]) > 0
    assert float(row["reference_forward_next_token_time(ms)"]) > 0


def test_max_batch_under_a_memory_limit(suites):
    result = suites.runpytest("copied_suites/perf", "--model", "qwen-tiny", "--max-batch",
                              "--memory-limit", "100MiB", "--seqlen-in-pair", "32",
                              "--seqlen-out-pair", "4", "--max-batch-cap", "2048", *SHORT,
                              "--run-id", "mb")
    result.assert_outcomes(passed=1)
    # each probe is shown as it ends: batch, outcome, memory
    result.stdout.fnmatch_lines(["qwen-tiny-cpu-fp32-*-in32-out4 max-batch probe batch *: fits, "
                                 "next token * ms, peak memory * MiB",
                                 "*max-batch probe batch *: does not fit (*"])
    [row] = read(suites, "mb", "max_batch_cpu_qwen-tiny_fp32.csv")
    found, predicted = int(row["max_batch"]), int(row["predicted_batch"])
    assert 0 < found < 2048 and predicted > 0 and row["bound_by"] == "memory"
    assert float(row["forward_next_token_time(ms)"]) > 0


@pytest.mark.parametrize("args, message", [
    (["--seqlen-in-pair", "32", "64", "--seqlen-out-pair", "8"],
     "--seqlen-in-pair has 2 values and --seqlen-out-pair 1: expected one output length per "
     "input length"),
    (["--seqlen-in-range", "6", "5", "--seqlen-out-range", "5", "5"],
     "--seqlen-in-range 6 5: expected START <= END within 0..20"),
    (["--seqlen-in-range", "5", "21", "--seqlen-out-range", "5", "5"],
     "--seqlen-in-range 5 21: expected START <= END within 0..20"),
    (["--seqlen-in-range", "5", "6"], "--seqlen-in-range and --seqlen-out-range go together"),
    (["--batch", "0"], "--batch '0': expected an integer >= 1"),
    (["--batch", "-2"], "--batch '-2': expected an integer >= 1"),
    (["--model", "qwen-tiny", "--seqlen-in-pair", "500", "--seqlen-out-pair", "64"],
     "qwen-tiny has 512 positions; perf in 500 + out 64 = 564 tokens do not fit"),
    (["--perf-baseline", "nosuch"], "--perf-baseline 'nosuch' is unknown; stored in"),
    (["--memory-limit", "lots"], "--memory-limit 'lots': expected a size like 512MiB"),
])
def test_bad_perf_options_are_usage_errors(suites, args, message):
    result = suites.runpytest("copied_suites/perf", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


@pytest.mark.parametrize("damage, message", [
    (lambda text: text.replace(",unit,", ",units,", 1), "missing column 'unit'"),
    (lambda text: text.replace(",ms,", ",mss,", 1), "row 2, column 'unit': 'mss' is not one of"),
    (lambda text: text.replace("59.18", "59,18", 1), "row 2 has 15 fields, expected 14"),
    (lambda text: text.replace("59.18", "59.1.8", 1), "row 2, column 'value': '59.1.8' is not "
                                                      "a positive number"),
])
def test_a_damaged_baseline_file_is_a_usage_error(suites, damage, message):
    baselines = suites.path / "baselines"
    shutil.copytree(ROOT / "baselines", baselines)
    file = baselines / "perf" / "000_falcon-7b.csv"
    file.write_text(damage(file.read_text()))
    result = suites.runpytest("copied_suites/perf", "--baselines-dir", str(baselines))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*000_falcon-7b.csv: {message}*"])


def test_another_devices_rows_are_gated_and_a_named_baseline_that_matches_nothing_fails(
        suites):
    tables = suites.path / "tables" / "perf"
    tables.mkdir(parents=True)
    header = ("source,table,model,hardware,device,dtype,batch,input_len,output_len,grid,metric,"
              "value,unit,note")
    (tables / "xdev.csv").write_text("\n".join([
        header, "s.txt,T,falcon-tiny,cuda,A100,fp32,1,16,4,,next_token,0.001,ms,",
        "s.txt,T,falcon-tiny,npu,910B3,fp32,1,16,4,,next_token,1000,ms,"]) + "\n")
    (tables / "other.csv").write_text(
        header + "\ns.txt,T,qwen-7b,npu,910B3,fp16,8,256,256,,next_token,15.5,ms,\n")
    result = suites.runpytest("copied_suites/perf", "--model", "falcon-tiny", "--batch", "1",
                              "--seqlen-in-pair", "16", "--seqlen-out-pair", "4",
                              "--baselines-dir", str(tables.parent), "--perf-baseline", "xdev",
                              "--perf-baseline", "other", "--perf-min-ratio", "0.5", *SHORT,
                              "--run-id", "xdev")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    rows = {r["case"]: r for r in read(suites, "xdev", "perf.csv")}
    [case] = rows.values()
    assert case["outcome"] == "failed" and "(A100):" in case["reason"] and \
        "< minimum 0.5" in case["reason"] and "(910B3)" not in case["reason"]
    [unmatched] = read(suites, "xdev", "run.csv")
    assert unmatched["case"] == "baseline other" and unmatched["outcome"] == "failed"
    assert unmatched["reason"].startswith("--perf-baseline other matched no case; it has rows "
                                          "for qwen-7b npu fp16 bs8 in256 out256")
    run = suites.path / "reports" / "xdev"
    assert json.loads((run / "run.json").read_text())["unmatched_baselines"] == ["other"]


def test_a_named_accuracy_baseline_that_matches_nothing_fails_the_run_that_ran_accuracy():
    from harness.baselines import BASELINES_DIR
    from harness.named_baselines import records, unmatched

    named = [("--perf-baseline", "perf", "dev-cpu"),
             ("--accuracy-baseline", "accuracy", "transformers-smollm2-fp32")]
    accuracy = {"suite": "accuracy", "case": "qwen-tiny-cpu-fp32-mmlu", "outcome": "passed",
                "comparisons": []}
    # no perf records: perf not judged
    assert unmatched([accuracy], named) == [("--accuracy-baseline", "accuracy",
                                             "transformers-smollm2-fp32")]
    [record] = records([accuracy], named, BASELINES_DIR)
    assert record["outcome"] == "failed" and record["case"] == \
        "baseline transformers-smollm2-fp32"
    assert record["reason"].startswith("--accuracy-baseline transformers-smollm2-fp32 matched "
                                       "no case; it has cases ceval-smollm2-135m")
    matched = {**accuracy, "comparisons": [{"baseline": "transformers-smollm2-fp32"}]}
    assert unmatched([matched], named) == []
    # a resumed run that matches it now supersedes its earlier failure
    [record] = records([matched, {**record, "suite": "run"}], named, BASELINES_DIR)
    assert record["outcome"] == "passed"

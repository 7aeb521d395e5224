"""The plugin across a run's life: xdist workers, resume, run ids, the results root, and repeated
option values."""
# ruff: noqa: F811  (the fixtures imported above are taken as test arguments)

import pytest

from tests.test_plugin import (
    rows,
    suite,  # noqa: F401  (fixtures)
)

pytest_plugins = ["pytester"]


def test_xdist_workers_write_their_own_files_and_the_controller_merges(suite):
    result = suite.runpytest_subprocess("-n", "2", "-k", "records", "--run-id", "x")
    result.assert_outcomes(passed=3, failed=1)
    run_dir = suite.path / "reports" / "x"
    assert {p.name for p in run_dir.glob("records-*.jsonl")} == {"records-gw0.jsonl",
                                                                 "records-gw1.jsonl"}
    expected = [f"qwen-tiny-cpu-fp32-bs{b}-in8" for b in (1, 2, 3, 4)]
    assert sorted(case for _, case in rows(suite, "x")) == expected
    assert (run_dir / "run.json").exists()
    result.stdout.fnmatch_lines(["*llmgate results*", "*bs3-in8*failed*"])


def test_resume_skips_passes_and_fails_recorded_failures_as_failed(suite):
    first = suite.runpytest("-k", "records and not bs4 or npu", "--run-id", "r")
    first.assert_outcomes(passed=2, failed=1, skipped=1)
    again = suite.runpytest("-k", "records or npu", "--run-id", "r", "--resume", "-rsf")
    again.assert_outcomes(passed=1, skipped=3, failed=1)  # the bs3 failure is not forgotten
    again.stdout.fnmatch_lines(["recorded as failed in run r: bs3 is too far",
                                "*already recorded in run r*", "FAILED*bs3*"])
    found = rows(suite, "r")
    assert len(found) == 5  # one row per test: the resumed run adds bs4, reruns the skip
    assert found[("test_records", "qwen-tiny-cpu-fp32-bs4-in8")]["outcome"] == "passed"


def test_resume_needs_a_run_with_records(suite):
    result = suite.runpytest("--resume")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--resume needs the --run-id*"])
    result = suite.runpytest("--resume", "--run-id", "never")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--resume: run 'never' has no records in *never*"])


def test_an_existing_run_id_is_not_silently_appended_to(suite):
    suite.runpytest("-k", "records and bs1", "--run-id", "dup").assert_outcomes(passed=1)
    result = suite.runpytest("-k", "records and bs1", "--run-id", "dup")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--run-id 'dup' already has records in *dup; pass --resume "
                                 "to continue it, or choose another --run-id*"])


def test_results_default_to_reports_under_the_rootdir(suite, monkeypatch):
    suite.makeini("[pytest]\n")
    (suite.path / "elsewhere").mkdir()
    monkeypatch.chdir(suite.path / "elsewhere")
    result = suite.runpytest(str(suite.path / "demo"), "-k", "records and bs1", "--run-id", "here")
    result.assert_outcomes(passed=1)
    assert (suite.path / "reports" / "here" / "demo.csv").exists()


def test_a_run_id_killed_before_its_first_record_is_not_reused_without_resume(suite):
    killed = suite.path / "reports" / "killed"
    (killed / "accuracy").mkdir(parents=True)  # answers written before any record
    (killed / "accuracy" / "answers.jsonl").write_text('{"id": 1}\n')
    result = suite.runpytest("-k", "records and bs1", "--run-id", "killed")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--run-id 'killed' already has files in *killed; pass "
                                 "--resume to continue it, or choose another --run-id*"])
    suite.runpytest("-k", "records and bs1", "--run-id", "killed", "--resume").assert_outcomes(
        passed=1)


def test_repeated_values_run_each_case_once(suites):
    once = suites.runpytest("copied_suites/numerics", "--collect-only", "-q", "--model",
                            "qwen-tiny", "--dtype", "fp32", "--seqlen", "32", "--batch", "1")
    twice = suites.runpytest("copied_suites/numerics", "--collect-only", "-q", "--model",
                             "qwen-tiny,qwen-tiny", "--dtype", "fp32,fp32", "--hardware",
                             "cpu,cpu", "--seqlen", "32,32", "--batch", "1", "--batch", "1")
    ids = [line for line in twice.outlines if "::" in line]
    assert ids and len(ids) == len(set(ids))
    assert ids == [line for line in once.outlines if "::" in line]


def test_the_perf_suite_takes_seqlen_as_its_input_lengths(suites):
    def ids(*args):
        result = suites.runpytest("copied_suites/perf", "--collect-only", "-q", "--model",
                                  "qwen-tiny", "--batch", "1", *args)
        return sorted(line.split("[")[1].rstrip("]") for line in result.outlines if "::" in line)

    assert ids("--seqlen", "32") == ["qwen-tiny-cpu-fp32-bs1-in32-out32"]
    assert ids("--seqlen", "16,64") == ["qwen-tiny-cpu-fp32-bs1-in16-out32",
                                        "qwen-tiny-cpu-fp32-bs1-in64-out32"]
    # explicit perf pairs win over --seqlen
    assert ids("--seqlen", "32", "--seqlen-in-pair", "8", "--seqlen-out-pair", "4") == [
        "qwen-tiny-cpu-fp32-bs1-in8-out4"]


def test_a_rank_directory_given_as_model_path_is_a_usage_error(suite, tmp_path):
    from harness.cli import main
    from tests.conftest import tiny_checkpoint

    out = tmp_path / "qwen-tp2"
    assert main(["weights", "cut", str(tiny_checkpoint("qwen-tiny")), str(out),
                 "--world-size", "2"]) == 0
    result = suite.runpytest("--model-path", f"qwen-tiny={out}/part_model/0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--model-path qwen-tiny={out}/part_model/0: rank 0 of a "
                                 "checkpoint split for 2 ranks; give the directory that holds "
                                 f"part_model/ ({out}) and --tp 2*"])


def test_help_lists_each_option_spelling_once(suite):
    result = suite.runpytest("--help")
    text = result.stdout.str()
    assert "--repeats=N, --repeats=N" not in text and "--repeats=N" in text
    assert "--seqlen-in-pair=N [N ...], --seqlen_in_pair=N [N ...]" in text

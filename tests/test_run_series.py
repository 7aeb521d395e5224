"""`llmgate compare` and `llmgate history` name each series as the run named it: the port token
stays in case ids, a suite's case is not another suite's, and a regression is not `passed`."""

import argparse

from harness.cli.runs import cmd_compare, cmd_history, compare_runs
from harness.report.history import history_table
from harness.results import ResultsStore, merge
from tests.example_run import perf_row

SHARED_ID = "qwen-tiny-cpu-fp32-bs1-in32-out16"  # a numerics case and a perf case


def write(run_dir, started: float, rows: list[dict]):
    store = ResultsStore(run_dir, "main")
    for row in rows:
        store.record({"session": 1, "worker": "main", **row})
    (run_dir / "run.json").write_text(f'{{"run_id": "{run_dir.name}", "started": {started}}}')
    merge(run_dir)
    return run_dir


def hf_perf(slow: float) -> dict:
    """A perf case of the hf port; both runs pass (no baseline gated them)."""
    row = perf_row("qwen-tiny", 1, 32, slow)
    return {**row, "case": row["case"] + "-hf", "port": "hf", "port_kind": "hf"}


def test_compare_keeps_the_port_token_and_never_says_passed_beside_a_regression(
        tmp_path, capsys):
    b = write(tmp_path / "b", 1.0, [hf_perf(1.0)])
    a = write(tmp_path / "a", 2.0, [hf_perf(3.0)])
    perf = compare_runs(a, b)["perf"]
    assert perf and all(r["case"] == f"{SHARED_ID}-hf" for r in perf)
    slower = [r for r in perf if r["change"] == "slower"]
    assert slower and all(r["ratio"] > 2 for r in slower)
    assert all(r["outcome"] == "regressed (both runs passed)" for r in slower)
    assert cmd_compare(argparse.Namespace(run_a=a, run_b=b, tolerance=0.10)) == 1
    out = capsys.readouterr().out
    assert f"{SHARED_ID}-hf" in out
    assert not any(" slower " in line and " passed " in line.replace("runs passed", "")
                   for line in out.splitlines())


def numerics(max_abs_diff: float) -> dict:
    return {"suite": "numerics", "test": "test_teacher_forced", "case": SHARED_ID,
            "model": "qwen-tiny", "hardware": "cpu", "dtype": "fp32", "batch": 1,
            "seqlen": 32, "out": 16, "outcome": "passed", "passed": True, "reason": "",
            "max_abs_diff": max_abs_diff}


def test_history_keeps_a_numerics_case_and_a_perf_case_that_share_an_id_apart(
        tmp_path, capsys):
    for index, (diff, slow) in enumerate([(1e-6, 1.0), (3e-6, 1.5)], start=1):
        write(tmp_path / f"run{index}", float(index),
              [numerics(diff), perf_row("qwen-tiny", 1, 32, slow)])
    table = history_table(tmp_path)
    assert {(h["suite"], h["case"], h["test"], h["metric"]) for h in table} == {
        ("numerics", SHARED_ID, "test_teacher_forced", "max |dlogit|"),
        ("perf", SHARED_ID, "test_perf", "next-token ms"),
        ("perf", SHARED_ID, "test_perf", "E2E tokens/s")}
    [dlogit] = history_table(tmp_path, {("numerics", SHARED_ID, "test_teacher_forced")})
    assert dlogit["metric"] == "max |dlogit|" and dlogit["regressed_at"] == "run2"
    assert [v for _, v, _ in dlogit["values"]] == [1e-6, 3e-6]
    assert cmd_history(argparse.Namespace(results_dir=tmp_path, case=SHARED_ID, last=8)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["suite", "case", "test", "metric"]
    assert any(line.split()[:2] == ["numerics", SHARED_ID] for line in lines)
    assert any(line.split()[:2] == ["perf", SHARED_ID] for line in lines)

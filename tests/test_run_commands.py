"""llmgate report, merge, compare and history on stored runs."""

import csv
import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.cli.runs import VOLATILE, compare_runs
from harness.results import latest_rows, load_records
from tests.example_run import write_run

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["pytester"]

SUITE = """
import pytest
from harness.cases import Case
from harness.verdicts import verdict

CASES = [Case(m, "cpu", "fp32", b, 16, 4) for m in ("qwen-tiny", "falcon-tiny", "bloom-tiny")
         for b in (1, 2)]

@pytest.mark.parametrize("case", CASES, ids=str)
def test_cell(case, record):
    result = verdict([] if case.batch == 1 else [], 1.0, value=len(case.model) * case.batch)
    record(result, thresholds_version=1)
    assert result.passed
"""


def comparable(run_dir: Path) -> list[dict]:
    # a case's peak memory is measured, like its timings: it differs from run to run
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE and not k.startswith("peak_")}
                   for r in latest_rows(load_records(run_dir))), key=lambda r: r["case"])


def test_two_shards_merge_into_the_unsharded_run(pytester, monkeypatch):
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    (pytester.path / "demo").mkdir()
    (pytester.path / "demo" / "test_cells.py").write_text(SUITE)
    for args in (["--shard", "1/2", "--run-id", "a"], ["--shard", "2/2", "--run-id", "b"],
                 ["--run-id", "whole"]):
        pytester.runpytest("demo", *args)
    reports = pytester.path / "reports"
    a, b = comparable(reports / "a"), comparable(reports / "b")
    assert {r["model"] for r in a}.isdisjoint({r["model"] for r in b})  # models stay whole
    assert len(a) + len(b) == 6
    assert main(["merge", str(reports / "merged"), str(reports / "a"), str(reports / "b")]) == 0
    assert comparable(reports / "merged") == comparable(reports / "whole")
    for name in ("demo.csv", "index.html", "summary.md"):
        assert (reports / "merged" / name).exists()
    assert main(["merge", str(reports / "again"), str(reports / "a"), str(reports / "a")]) == 2


def test_compare_a_run_with_itself_shows_no_differences(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert main(["compare", str(run), str(run)]) == 0
    assert capsys.readouterr().out.startswith("no differences between")


def test_compare_shows_exactly_the_injected_changes(tmp_path, capsys):
    before = write_run(tmp_path / "before")
    after = write_run(tmp_path / "after")
    # one perf cell 30% slower, and three answers of the MMLU case flipped to wrong
    rows = load_records(after)
    slow = write_run(tmp_path / "slow_source", slow=1.3)
    slow_row = next(r for r in load_records(slow) if r["case"] == "qwen-tiny-cpu-fp32-bs8-in128"
                    "-out16")
    rows = [slow_row if r["case"] == slow_row["case"] else r for r in rows]
    (after / "records-example.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    flipped = write_run(tmp_path / "flipped", flips=3)
    answers = flipped / "accuracy" / "mmlu-qwen-tiny-cpu-fp32-bs8-0shot" / "answers.jsonl"
    target = after / "accuracy" / "mmlu-qwen-tiny-cpu-fp32-bs8-0shot" / "answers.jsonl"
    target.write_text(answers.read_text())
    diff = compare_runs(after, before)
    assert [(d["case"], d["change"]) for d in diff["perf"]] == [
        ("qwen-tiny-cpu-fp32-bs8-in128-out16", "slower")] * len(diff["perf"])
    assert {d["metric"] for d in diff["perf"]} >= {"next_token", "first_token"}
    assert [d["case"] for d in diff["accuracy"]] == ["mmlu-qwen-tiny-cpu-fp32-bs8-0shot"]
    assert diff["accuracy"][0]["right_to_wrong"] == [f"abstract_algebra/test/{i}"
                                                     for i in (1, 4, 7)]
    assert diff["numerics"] == [] and diff["outcome"] == []
    assert main(["compare", str(after), str(before)]) == 1
    out = capsys.readouterr().out
    assert "slower" in out and "abstract_algebra/test/4" in out
    assert "A is worse than B:" in out and "perf metrics slower beyond the tolerance" in out


def test_compare_names_cases_only_one_run_has_and_refuses_runs_with_none_in_common(
        tmp_path, capsys):
    before = write_run(tmp_path / "before")
    after = write_run(tmp_path / "after")
    rows = load_records(after)
    lost = rows[0]["case"]
    (after / "records-example.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows if r["case"] != lost))
    diff = compare_runs(after, before)
    assert {(d["case"], d["only_in"]) for d in diff["missing"]} == {(lost, "B")}
    assert main(["compare", str(after), str(before)]) == 1
    out = capsys.readouterr().out
    assert lost in out and "cases of B missing from A" in out
    other = tmp_path / "other"
    other.mkdir()
    (other / "records-x.jsonl").write_text(json.dumps({**rows[0], "case": "elsewhere"}) + "\n")
    assert main(["compare", str(after), str(other)]) == 2
    assert "no case in common" in capsys.readouterr().err


def test_history_flags_the_run_where_a_regression_entered(tmp_path, capsys):
    for index, slow in enumerate((1.0, 1.0, 1.4, 1.4), start=1):
        write_run(tmp_path / f"run{index}", slow=slow, started=float(index))
    assert main(["history", "--results-dir", str(tmp_path), "--case",
                 "qwen-tiny-cpu-fp32-bs8-in32-out16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    next_token = next(line for line in lines if "next-token ms" in line)
    assert next_token.rstrip().endswith("run3")
    throughput = next(line for line in lines if "E2E tokens/s" in line)
    assert throughput.rstrip().endswith("run3")


def test_report_rerenders_from_records(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert main(["report", str(run)]) == 1  # the run failed: so does re-rendering it
    assert capsys.readouterr().err.strip() == "llmgate FAILED"
    html = (run / "index.html").read_text()
    assert "GATES FAILED" in html and "non-finite logits" in html
    assert not (tmp_path / "latest").exists()  # only a run that executed cases moves it
    with open(run / "performance_cpu_qwen-tiny_fp32.csv") as f:
        assert next(csv.reader(f))[0] == "batch_size"


def test_only_a_run_that_executed_cases_writes_its_run_or_moves_latest(pytester, capsys):
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    (pytester.path / "demo").mkdir()
    (pytester.path / "demo" / "test_cells.py").write_text(SUITE)
    reports = pytester.path / "reports"
    for run_id in ("old", "new"):
        pytester.runpytest("demo", "-k", "qwen", "--run-id", run_id).assert_outcomes(passed=2)
    assert (reports / "latest").resolve() == (reports / "new").resolve()
    written = {f.name: f.read_bytes() for f in (reports / "old").iterdir() if f.is_file()}
    for run_id in ("old", "never"):
        result = pytester.runpytest("demo", "--collect-only", "--run-id", run_id)
        assert result.ret == pytest.ExitCode.OK
    assert {f.name: f.read_bytes() for f in (reports / "old").iterdir() if f.is_file()} == \
        written  # run.json and the report untouched
    assert not (reports / "never").exists()
    assert main(["report", str(reports / "old")]) == 0
    assert (reports / "latest").resolve() == (reports / "new").resolve()

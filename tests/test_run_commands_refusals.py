"""What llmgate compare/report/merge refuse, and what the report and summary keep of failures."""

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.report.history import history_charts, history_table, runs
from harness.report.render import context, render
from harness.results import load_records, merge
from tests.example_run import PERF_CASES, write_run
from tests.report_cases import (
    FAILING_CASE,
    FAILURES,
    add_comparisons,
    add_load,
    edit_records,
    fail_perf_case,
)

pytest_plugins = ["pytester"]


@pytest.mark.parametrize("tolerance", ["-1", "nan", "x"])
def test_compare_refuses_a_negative_tolerance(tmp_path, capsys, tolerance):
    run = write_run(tmp_path / "run")
    with pytest.raises(SystemExit):
        main(["compare", str(run), str(run), "--tolerance", tolerance])
    assert "--tolerance: expected a fraction >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["report", "{x}"], ["compare", "{x}", "{x}"],
                                     ["merge", "{out}", "{x}"],
                                     ["history", "--results-dir", "{x}"]])
def test_commands_on_a_directory_that_is_not_a_run(tmp_path, capsys, command):
    (tmp_path / "x").mkdir()
    args = [a.format(x=tmp_path / "x", out=tmp_path / "out") for a in command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llmgate {command[0]}: ") and "\n" not in err.strip()
    assert "not a run" in err or "no runs" in err


def test_report_names_a_missing_run_directory_and_a_file_apart(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == (f"llmgate report: {tmp_path / 'nowhere'}: no such "
                                               "run directory")
    (tmp_path / "afile").write_text("")
    assert main(["report", str(tmp_path / "afile")]) == 2
    assert "afile: not a directory (a run is the directory of its records)" in \
        capsys.readouterr().err


def test_merging_different_task_versions_is_refused_unless_forced(tmp_path, capsys):
    a, b = write_run(tmp_path / "a", models=("qwen-tiny",)), write_run(tmp_path / "b",
                                                                        models=("falcon-tiny",))
    rows = load_records(b)
    for r in rows:
        if r.get("task") == "mmlu":
            r["prompt_hash"] = "changed"
    (b / "records-example.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["merge", str(tmp_path / "m"), str(a), str(b)]) == 2
    assert "mmlu prompt_hash abc123 vs changed; --force to merge anyway" in \
        capsys.readouterr().err
    assert main(["merge", str(tmp_path / "m"), str(a), str(b), "--force"]) == 0


def test_records_of_a_newer_format_are_refused(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    rows = load_records(run)
    rows[0]["format"] = 99
    (run / "records-example.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(run)]) == 2
    assert "records of format 99 are newer than this llmgate reads" in capsys.readouterr().err


def test_merge_writes_the_same_csvs(tmp_path):
    run = write_run(tmp_path / "run")
    written = merge(run)
    assert set(written) == {"numerics", "perf", "accuracy"}


# --- what the report and summary.md show (tests/report_cases.py adds the records by hand)


def summary(run: Path) -> str:
    render(run)
    return (run / "summary.md").read_text()


def test_a_failing_perf_case_stays_in_the_report_marked(tmp_path):
    run = write_run(tmp_path / "run")
    fail_perf_case(run)
    rows = context(run)["perf"]["models"][0]["rows"]
    assert [r["outcome"] for r in rows if r["case"] == FAILING_CASE] == ["failed"]
    assert len(rows) == len(PERF_CASES)
    html = (render(run)).read_text()
    assert f'<tr class="failed"><td class="text case">{FAILING_CASE}</td>' in html


def test_summary_shows_every_failure_whole_as_markdown(tmp_path):
    run = write_run(tmp_path / "run")
    fail_perf_case(run)
    edit_records(run, lambda r: r.update(reason="the port's logits: 3 < 4") if
                 r["outcome"] == "failed" and r["suite"] == "numerics" else None)
    text = summary(run)
    for failure in FAILURES:
        assert failure in text  # the third one too, and no number cut short
    assert "the port's logits: 3 < 4" not in text  # '<' is escaped for Markdown, not HTML
    assert "the port's logits: 3 \\< 4" in text
    assert "&gt;" not in text and "&#39;" not in text and "&lt;" not in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_unknown_outcomes_do_not_pass(tmp_path):
    run = write_run(tmp_path / "run")
    edit_records(run, lambda r: r.update(outcome="xpassed"))
    text = summary(run)
    assert text.startswith("# llmgate FAILED")
    assert "| unknown |" in text.splitlines()[2]
    ctx = context(run)
    assert not ctx["passed"] and ctx["totals"]["unknown"] == len(load_records(run))


def test_the_machine_load_is_in_the_report_when_recorded(tmp_path):
    run = write_run(tmp_path / "run")
    assert "load" not in summary(run)
    add_load(run, 6.52, 2)
    assert "machine load 6.52 (1-minute average) on 2 CPUs" in summary(run)
    html = (run / "index.html").read_text()
    assert "machine load 6.52 (1-minute average) on 2 CPUs" in html
    assert "<th>load (1 min)</th>" in html


def test_summary_lists_the_largest_slowdowns_against_stored_runs_of_ours(tmp_path):
    run = write_run(tmp_path / "run")
    add_comparisons(run)
    text = summary(run)
    assert "| perf | 7 | 0 | 0 | 0 | 1 |" in text  # nothing in perf failed or went ungated ...
    listed = text.split("## Largest slowdowns against stored runs", 1)[1].split("\n\n")[1]
    lines = listed.splitlines()
    assert 1 <= len(lines) <= 5 and all("dev-cpu" in line for line in lines)  # ours only
    assert lines[0].startswith(f"- **{9 * 1.128:.3g}x** ")  # the largest first
    assert "A100" not in listed


def test_the_side_by_side_table_shows_every_stored_device_per_row(tmp_path):
    run = write_run(tmp_path / "run", models=("qwen-tiny", "falcon-tiny"))
    add_comparisons(run, "qwen-tiny")
    falcon, qwen = context(run)["perf"]["models"]
    assert falcon["side_by_side"] is None  # no comparisons
    table = qwen["side_by_side"]
    assert [c["label"] for c in table["columns"]] == [
        "003_qwen-tiny_a100 (A100)", "004_qwen-tiny_910b3 (910B3)", "dev-cpu (Example CPU)"]
    assert len(table["rows"]) == len(PERF_CASES) * 3
    row = next(r for r in table["rows"] if (r["batch"], r["seqlen"], r["metric"]) ==
               (4, 32, "next_token"))
    a100 = row["cells"][0]
    assert a100["slowdown"] == pytest.approx(2.0 * 1.032)
    assert a100["theirs"] == pytest.approx(row["ours"] / (2.0 * 1.032))
    html = render(run).read_text()
    assert 'id="side-by-side-qwen-tiny"' in html


def test_each_chart_means_something_for_its_data(tmp_path):
    run = write_run(tmp_path / "run")
    # one batch only, and two output lengths for the same input lengths
    def change(row):
        if row.get("test") == "test_perf" and row["model"] == "qwen-tiny":
            row["out"] = 16 if row["batch"] == 1 else 32
            row["batch"] = 1
            row["case"] = f"qwen-tiny-cpu-fp32-bs1-in{row['seqlen']}-out{row['out']}"
    edit_records(run, change)
    charts = "".join(context(run)["perf"]["models"][0]["charts"])
    assert "vs batch" not in charts  # one batch: no chart, not a column of dots
    assert "first-token latency vs input length" in charts
    assert "bs1 out16" in charts and "bs1 out32" in charts  # one line per output length
    add_comparisons(run)
    charts = "".join(context(run)["perf"]["models"][0]["charts"])
    assert "ratio against A100" in charts and "ratio against 910B3" in charts


def test_history_keeps_a_failing_case_and_marks_it(tmp_path, capsys):
    for index, slow in enumerate((1.0, 1.0, 1.4), start=1):
        write_run(tmp_path / f"run{index}", slow=slow, started=float(index))
    fail_perf_case(tmp_path / "run3", "qwen-tiny-cpu-fp32-bs8-in32-out16")
    assert main(["history", "--results-dir", str(tmp_path), "--case",
                 "qwen-tiny-cpu-fp32-bs8-in32-out16"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "next-token" in line)
    assert line.split()[:3] == ["perf", "qwen-tiny-cpu-fp32-bs8-in32-out16", "test_perf"]
    assert line.split()[5] == "3" and line.rstrip().endswith("(failed)  run3")


def test_history_counts_a_merged_run_once_at_its_last_shard(tmp_path, capsys):
    a = write_run(tmp_path / "a", models=("qwen-tiny",), started=1.0)
    b = write_run(tmp_path / "b", models=("falcon-tiny",), started=3.0)
    write_run(tmp_path / "between", models=("qwen-tiny", "falcon-tiny"), started=2.0)
    assert main(["merge", str(tmp_path / "ab"), str(a), str(b)]) == 0
    write_run(tmp_path / "later", models=("qwen-tiny", "falcon-tiny"), started=4.0)
    assert [run_id for run_id, _, _ in runs(tmp_path)] == ["between", "ab", "later"]
    table = history_table(tmp_path, {"falcon-tiny-cpu-fp32-bs1-in32-out16"})
    assert {h["runs"] for h in table} == {3}
    charts = history_charts(tmp_path)
    assert charts and all(all(f">{r}<" in c for r in ("between", "ab", "later"))
                          for c in charts)  # run ids as tick labels
    assert all(">0.5<" not in c and ">1.5<" not in c for c in charts)


@pytest.mark.parametrize("last", ["0", "-3", "x"])
def test_history_last_must_be_at_least_one(tmp_path, capsys, last):
    write_run(tmp_path / "run")
    with pytest.raises(SystemExit) as exit_:
        main(["history", "--results-dir", str(tmp_path), "--last", last])
    assert exit_.value.code == 2
    assert "--last: expected an integer >= 1" in capsys.readouterr().err

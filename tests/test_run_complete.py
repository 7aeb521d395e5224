"""A run ends complete or says it did not: interrupts, kills, resumes, merges of shards, and
cases that were only measured (no comparable baseline)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.selection import read_run
from tests.conftest import CACHE

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["pytester"]

# Three cases per --model; the case named by $STOP_AT stops the run there (Ctrl-C), or waits
# to be killed ($WAIT_AT, after touching the file $WAIT_AT names).
CONFTEST = """
from harness.cases import Case
from harness.plugin import LLMGATE, parametrize_cases

def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        models = metafunc.config.stash[LLMGATE].settings.models
        parametrize_cases(metafunc, [Case(m, "cpu", "fp32", b, 8) for m in models
                                     for b in (1, 2, 3)])
"""
SUITE = """
import os, pathlib, time
from harness.verdicts import verdict

def test_cell(case, record):
    if case.id == os.environ.get("STOP_AT"):
        raise KeyboardInterrupt
    if case.id == os.environ.get("WAIT_AT", "").split(":")[0]:
        pathlib.Path(os.environ["WAIT_AT"].split(":")[1]).touch()
        time.sleep(120)
    # No baseline for batch 3: measured, not gated.
    record(verdict([], 1.0, value=case.batch, baselines_compared=0 if case.batch == 3 else 1))

def test_other(case, record):
    record(verdict([], 1.0, value=case.seqlen, baselines_compared=1))
"""
QWEN = "qwen-tiny-cpu-fp32-bs{}-in8"
CELLS = ("--model", "qwen-tiny", "-k", "cell")  # three cases


@pytest.fixture
def demo(pytester, monkeypatch):
    monkeypatch.setenv("LLMGATE_CACHE", str(CACHE))
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    (pytester.path / "demo").mkdir()
    (pytester.path / "demo" / "conftest.py").write_text(CONFTEST)
    (pytester.path / "demo" / "test_demo.py").write_text(SUITE)
    return pytester


def reports(pytester) -> Path:
    return pytester.path / "reports"


def page(run: Path) -> tuple[str, str]:
    return (run / "index.html").read_text(), (run / "summary.md").read_text()


def verdict_of(html: str) -> str:
    return html.split('id="verdict">')[1].split("<")[0]


def test_ctrl_c_after_the_first_case_leaves_an_incomplete_run_in_red(demo, monkeypatch):
    monkeypatch.setenv("STOP_AT", QWEN.format(2))
    result = demo.runpytest("demo", *CELLS, "--run-id", "stopped", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    run = reports(demo) / "stopped"
    why = "2 of 3 selected cases never ran: interrupted"
    result.stdout.fnmatch_lines([f"llmgate INCOMPLETE: {why}"])
    html, summary = page(run)
    assert verdict_of(html) == "INCOMPLETE" and why in html
    assert summary.startswith(f"# llmgate INCOMPLETE: run `stopped`\n\n**{why}**\n")
    meta = read_run(run)
    assert (meta["status"], meta["incomplete"]) == ("incomplete", why)
    assert meta["selection"]["demo"]["count"] == 3
    assert f"completed,failed,False,{why}" in (run / "run.csv").read_text()


def test_under_xdist_the_controller_records_the_workers_selection_and_checks_resumes(
        demo, monkeypatch):
    monkeypatch.setenv("STOP_AT", QWEN.format(2))
    result = demo.runpytest_subprocess("demo", "-n", "2", *CELLS, "--run-id", "x")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    run = reports(demo) / "x"
    meta = read_run(run)
    assert meta["status"] == "incomplete" and meta["selection"]["demo"]["count"] == 3
    assert meta["incomplete"].endswith("of 3 selected cases never ran: interrupted")
    assert not list(run.glob(".selection-*"))  # the workers' selections, read and removed
    monkeypatch.delenv("STOP_AT")
    other = demo.runpytest_subprocess("demo", "-n", "2", "--model", "falcon-tiny", "-k", "cell",
                                      "--run-id", "x", "--resume")
    assert other.ret == pytest.ExitCode.USAGE_ERROR
    other.stderr.fnmatch_lines(["ERROR: --resume: run 'x' selected 3 demo tests*"])
    assert read_run(run) == meta


def test_sigterm_ends_the_run_as_incomplete_and_a_killed_run_reports_interrupted(demo):
    run = reports(demo) / "t"

    def start(run_id: str, wait_at: str) -> subprocess.Popen:
        marker = demo.path / f"{run_id}.waiting"
        env = {**os.environ, "WAIT_AT": f"{wait_at}:{marker}"}
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "demo", *CELLS,
                                 "--run-id", run_id, "-p", "no:cacheprovider"],
                                cwd=demo.path, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(600):  # until the case that waits has started
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), proc.communicate()[0]
        return proc

    proc = start("t", QWEN.format(2))
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "llmgate INCOMPLETE: 2 of 3 selected cases never ran: interrupted" in out
    assert read_run(run)["status"] == "incomplete"
    assert page(run)[1].startswith("# llmgate INCOMPLETE")

    proc = start("k", QWEN.format(3))
    proc.kill()  # SIGKILL: no session end, run.json still says running
    proc.communicate(timeout=60)
    killed = reports(demo) / "k"
    assert read_run(killed)["status"] == "running"
    assert main(["report", str(killed)]) == 1
    html, summary = page(killed)
    assert verdict_of(html) == "INTERRUPTED"
    assert "run.json still says running: 1 of 3 selected cases have no record" in html
    assert summary.startswith("# llmgate INTERRUPTED")
    (killed / "run.json").unlink()
    assert main(["report", str(killed)]) == 1
    html, summary = page(killed)
    assert verdict_of(html) == "INTERRUPTED" and "no run.json" in html
    assert summary.startswith("# llmgate INTERRUPTED") and "passed" not in summary.split("\n")[0]


def test_a_resume_must_select_what_its_run_selected(demo, monkeypatch):
    monkeypatch.setenv("STOP_AT", QWEN.format(2))
    first = demo.runpytest("demo", "--model", "qwen-tiny", "--run-id", "r3b",
                           no_reraise_ctrlc=True)
    assert first.ret == pytest.ExitCode.INTERRUPTED
    before = (reports(demo) / "r3b" / "run.json").read_text()
    monkeypatch.delenv("STOP_AT")
    other = demo.runpytest("demo", "--model", "falcon-tiny", "--run-id", "r3b", "--resume")
    assert other.ret == pytest.ExitCode.USAGE_ERROR
    (line,) = [line for line in other.errlines if "--resume" in line]
    assert "run 'r3b' selected 6 demo tests (`pytest demo --model qwen-tiny --run-id r3b" in line
    assert "this selection has 6, without 6 of them: resume with the run's own selection" \
        in line
    assert (reports(demo) / "r3b" / "run.json").read_text() == before  # left as it was
    again = demo.runpytest("demo", "--model", "qwen-tiny", "--run-id", "r3b", "--resume")
    again.assert_outcomes(passed=5, skipped=1)  # the rest ran; the recorded pass skipped
    assert again.ret == pytest.ExitCode.OK
    meta = read_run(reports(demo) / "r3b")
    assert (meta["status"], meta["incomplete"]) == ("complete", "")
    html, summary = page(reports(demo) / "r3b")
    assert "never ran" not in html and "all 6 selected cases ran" in (
        reports(demo) / "r3b" / "run.csv").read_text()
    # five cases and the run's own check that all ran, which replaces the failing one
    assert summary.startswith("# llmgate passed (5 gated), 1 measured only")


def test_a_run_from_before_selections_were_recorded_still_resumes(demo, monkeypatch):
    monkeypatch.setenv("STOP_AT", QWEN.format(2))
    demo.runpytest("demo", *CELLS, "--run-id", "old", no_reraise_ctrlc=True)
    run = reports(demo) / "old"
    meta = read_run(run)
    for key in ("selection", "status", "incomplete"):
        meta.pop(key, None)
    (run / "run.json").write_text(json.dumps(meta))
    monkeypatch.delenv("STOP_AT")
    again = demo.runpytest("demo", "--model", "falcon-tiny", "-k", "cell", "--run-id", "old",
                           "--resume")
    again.assert_outcomes(passed=3)


def test_a_merge_that_lacks_a_shard_is_incomplete_and_names_it(demo, capsys):
    models = ["--model", "qwen-tiny", "--model", "falcon-tiny", "-k", "cell"]
    for shard in ("1/2", "2/2"):
        demo.runpytest("demo", *models, "--shard", shard, "--run-id", shard[0]).assert_outcomes(
            passed=3)
    a, b = (read_run(reports(demo) / k) for k in "12")
    assert (a["shard"], b["shard"]) == ("1/2", "2/2")
    assert a["selection"]["demo"]["whole_hash"] == b["selection"]["demo"]["whole_hash"]
    assert a["selection"]["demo"]["hash"] != b["selection"]["demo"]["hash"]
    out = reports(demo) / "half"
    assert main(["merge", str(out), str(reports(demo) / "1")]) == 1
    why = "3 of 6 selected cases never ran: shard 2/2 missing"
    assert f"llmgate merge: INCOMPLETE: {why}" in capsys.readouterr().err
    html, summary = page(out)
    assert verdict_of(html) == "INCOMPLETE" and why in html
    assert summary.startswith("# llmgate INCOMPLETE")
    whole = reports(demo) / "whole"
    assert main(["merge", str(whole), str(reports(demo) / "1"), str(reports(demo) / "2")]) == 0
    assert read_run(whole)["status"] == "complete"
    assert page(whole)[1].startswith("# llmgate passed (4 gated), 2 measured only")


def test_measured_only_cases_are_counted_apart_from_gated_passes(demo):
    result = demo.runpytest("demo", "--model", "qwen-tiny", "--run-id", "m")
    assert result.ret == pytest.ExitCode.OK
    words = "passed (5 gated), 1 measured only"
    result.stdout.fnmatch_lines(["demo: 5 passed, 1 measured only, 0 failed, 0 error, "
                                 "0 skipped", f"llmgate {words}"])
    html, summary = page(reports(demo) / "m")
    assert verdict_of(html) == "PASSED (5 gated), 1 measured only"
    assert 'id="count-passed">5<' in html and 'id="count-measured-only">1<' in html
    assert summary.startswith(f"# llmgate {words}: run `m`")
    assert "| demo | 5 | 1 | 0 | 0 | 0 |" in summary
    assert "Measured only: passed cases that no baseline gated" in summary


def test_the_perf_gate_says_whether_any_baseline_judged_the_case():
    from harness.baselines import OursBaseline
    from harness.cases import Case
    from harness.perf.gate import gate
    from tests.example_run import samples

    case, measured = Case("qwen-tiny", "cpu", "fp32", 1, 32, 16), samples(1, 32)

    def gated(stored_on: str | None) -> bool:
        ours = {} if stored_on is None else {"b": OursBaseline("b", Path("b"), "", {}, {
            case.id: {"case": case.id, "device": stored_on, "samples": measured.as_dict()}})}
        result, _ = gate(case, measured, "this cpu", [], ours, 0.10, None, None)
        assert result.passed
        return result.metrics["gated"]

    assert gated("this cpu")
    assert not gated(None)  # no baseline at all
    assert not gated("another cpu")  # another device's figures are shown, not gated


# A team's port that answers every question alike: constant logits.
CONSTANT = textwrap.dedent('''
    """A team's port that returns the same logits whatever it is given."""
    import torch

    from harness.reference_runner import ReferenceRunner


    class Constant(ReferenceRunner):
        def prefill(self, input_ids, attention_mask=None, all_logits=False):
            return torch.zeros_like(super().prefill(input_ids, attention_mask, all_logits))

        def decode(self, next_ids):
            return torch.zeros_like(super().decode(next_ids))


    def constant(path, *, model, precision, hardware):
        return Constant(path, precision)
''')


def test_an_accuracy_case_with_no_baseline_is_measured_only_and_names_its_port(suites,
                                                                               monkeypatch):
    (suites.path / "team_constant.py").write_text(CONSTANT)
    monkeypatch.syspath_prepend(str(suites.path))
    result = suites.runpytest("copied_suites/accuracy", "--model", "alpaca2-tiny", "--task",
                              "ceval", "--questions-per-subject", "1", "--port",
                              "alpaca2-tiny=team_constant:constant", "--run-id", "acc")
    result.assert_outcomes(passed=1)
    run = suites.path / "reports" / "acc"
    html, summary = page(run)
    assert verdict_of(html) == "PASSED (0 gated), 1 measured only"
    assert summary.startswith("# llmgate passed (0 gated), 1 measured only")
    (row,) = [json.loads(line) for line in (run / "records-main.jsonl").read_text().splitlines()]
    assert row["gated"] is False and row["port_kind"] == "plugin"
    assert f"port {row['port']} (plugin)" in html and "runner ported" not in html

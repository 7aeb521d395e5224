"""The pytest plugin behind the suites: settings, runner pool, hardware gating, results.

Options are declared in `harness.options` and checked at start-up (`harness.suites`: the core's
`harness.settings` and each suite's own); the suites' conftest files read the plugin from
`config.stash[LLMGATE]` and expand their grids (`harness.{numerics,perf,accuracy}.grid`). Every
suite test that runs a `Case` leaves exactly one record, written from pytest's report hook so
that no suite can forget it: passed, failed, error (with its one-line reason) or skipped (with
the reason), plus whatever metrics the test passed to `record(...)`. At the end of the session
the run's rows are read once, each suite's session end adds what only the whole run shows
(`Suite.finish`), and the same rows go to the CSVs, the report and the console table, which
therefore always agree with pytest's exit status. The run's selection is written into run.json
as soon as it is known, so that a run that ends before it ran every selected test says so
(`harness.selection`); SIGTERM ends the session as Ctrl-C does, so that a killed run still
finishes its records and report.
"""

from __future__ import annotations

import json
import signal
import threading

import pytest

from harness import named_baselines
from harness.cases import Case
from harness.fixtures import (  # noqa: F401  (the fixtures: this module is the plugin)
    LLMGATE,
    OUTCOME,
    case_of,
    has_case_param,
    llmgate,
    record,
    run_dir,
    runner_pool,
)
from harness.ordering import grouped
from harness.peaks import case_peaks, start_case_peaks
from harness.results import latest_rows, load_records, summary_table
from harness.run_session import RunSession
from harness.selection import (
    completion_record,
    is_completion,
    read_run,
    selected_count,
    selection,
    write_json,
)
from harness.sharding import outside_shard
from harness.suites import check_run, run_settings, session_records
from harness.verdicts import Verdict
from harness.weights import WeightResolver
from models.quant import int8_kernel


def parametrize_cases(metafunc, cases: list[Case]) -> None:
    """Parametrize `case`; an empty grid is deselected, not skipped as an empty set."""
    if cases:
        metafunc.parametrize("case", cases, ids=str)
    else:
        metafunc.parametrize("case", [None], ids=["no-case"])


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def _reason(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return report.longrepr[2].removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return one_line(text.removeprefix("Failed: ").removeprefix("AssertionError: "))


class LlmgatePlugin:
    """pytest's hooks for a run: what they share is its `RunSession`."""

    def __init__(self, config: pytest.Config):
        self.settings = run_settings(config)
        self.weights = WeightResolver(self.settings.model_paths, self.settings.cache_dir)
        check_run(self.settings, self.weights)
        self.run = RunSession(config, self.settings)
        self.is_worker, self.run_dir = self.run.is_worker, self.run.run_dir
        self.executed = 0  # tests this session ran (xdist: reported by the workers)
        self.rows: list[dict] | None = None  # the run's latest rows, once the session ended
        self.previous_sigterm = None

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node):  # xdist: workers share the controller's run
        run = self.run
        node.workerinput["llmgate_run"] = (run.run_id, run.session, run.command)

    @pytest.hookimpl(trylast=True)  # after -k and -m have deselected
    def pytest_collection_modifyitems(self, config, items):
        shard = self.settings.shard
        drop = [item for item in items if case_of(item) is None and has_case_param(item)]
        whole = _tests(items, exclude=drop)
        if shard is not None:
            drop += outside_shard(items, case_of, shard)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = [item for item in items if item not in set(drop)]
        items[:] = grouped(items, case_of, lambda item: item.path.parent)
        for item in items:  # with --dist loadgroup, each model's cases share a worker
            if (case := case_of(item)) is not None:
                item.add_marker(pytest.mark.xdist_group(case.model))
        if whole:  # a run that selects no case leaves no directory
            ours = selection(_tests(items), whole, self.run.command)
            if self.is_worker:  # the controller checks it and owns run.json
                if not self.run.collect_only:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    write_json(self.run_dir / f".selection-{self.run.worker}.json", ours)
            else:
                self.run.select(ours)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        path = self.run_dir / f".selection-{node.gateway.id}.json"
        if path.exists():  # each worker collected alike: the first one's is the selection
            ours = json.loads(path.read_text())
            path.unlink()
            if self.run.selected is None:
                self.run.select(ours)

    # --- resume: a recorded pass is skipped, a recorded failure fails again (as FAILED)

    def _recorded(self, item) -> dict | None:
        case = case_of(item)
        return case is not None and self.run.recorded.get((case.id, item.originalname))

    def pytest_runtest_setup(self, item):
        if (case := case_of(item)) is not None:
            start_case_peaks(case.hardware)
        row = self._recorded(item)
        if row and row.get("outcome", "passed" if row["passed"] else "failed") == "passed":
            item.stash[OUTCOME] = {"resumed": True}
            pytest.skip(f"already recorded in run {self.run.run_id}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem):
        row = self._recorded(pyfuncitem)
        if row and row.get("outcome", "failed") in ("failed", "error"):
            pyfuncitem.stash[OUTCOME] = {"resumed": True}
            reason = row.get("reason") or row.get("failures") or "see its records"
            pytest.fail(f"recorded as failed in run {self.run.run_id}: {reason}", pytrace=False)

    # --- one record per case test, from the report hook

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        case = case_of(item)
        if case is None:
            return report
        state = item.stash.setdefault(OUTCOME, {})
        stashed: Verdict | None = state.get("verdict")
        if report.when == "call" and report.passed and stashed is not None and not stashed.passed:
            # A suite that records a failing verdict cannot pass.
            report.outcome, report.longrepr = "failed", f"{case}: {stashed.message()}"
        if report.when == "setup" and not report.passed:
            state.update(outcome="skipped" if report.skipped else "error", reason=_reason(report))
        elif report.when == "call":
            state.setdefault("metrics", {}).update(case_peaks(case.hardware),
                                                   case_seconds=round(report.duration, 3))
            # A check that failed is `failed`; any other exception (a corrupt checkpoint or
            # dataset, a crash) is `error`, as the README's Results define them. pytest's own
            # outcome stays failed.
            crashed = report.failed and call.excinfo is not None and not \
                call.excinfo.errisinstance((AssertionError, pytest.fail.Exception))
            state.update(outcome="error" if crashed else report.outcome,
                         reason="" if report.passed else _reason(report))
        elif report.when == "teardown":
            if report.failed and state.get("outcome") == "passed":
                state.update(outcome="error", reason=_reason(report))
            if not state.get("resumed"):
                self._write(item, case, state)
        return report

    def _write(self, item, case: Case, state: dict) -> None:
        verdict: Verdict | None = state.get("verdict")
        fields = {}
        if verdict is not None:
            fields = {**verdict.metrics, "limit": verdict.limit, "rule": verdict.rule,
                      "failures": verdict.message()}
        outcome = state.get("outcome", "error")
        reason = state.get("reason", "").removeprefix(f"{case.id}: ")
        core = {"suite": item.path.parent.name, "case": case.id, "test": item.originalname,
                "outcome": outcome, "passed": outcome == "passed", "reason": reason,
                "model": case.model, "hardware": case.hardware, "dtype": case.dtype,
                "batch": case.batch, "seqlen": case.seqlen, "out": case.out, "task": case.task,
                "port": case.port or "engine", "port_kind": self._port_kind(case),
                "config_source": self.settings.config_source(case.model)}
        if core["port_kind"] == "engine" and case.precision.scheme:
            fields["int8_kernel"] = int8_kernel(case.precision, case.hardware)
        measured = {**fields, **state.get("metrics", {})}
        self.run.record({**core, **{k: v for k, v in measured.items() if k not in core}})

    def _port_kind(self, case: Case) -> str:
        """engine, hf, openai, llama-cpp or plugin."""
        try:
            return self.settings.port(case).kind
        except StopIteration:  # a case no port of this session runs
            return "engine" if not case.port else ""

    def pytest_runtest_logreport(self, report):
        if report.when == "setup":
            self.executed += 1

    # --- SIGTERM (a CI timeout, `kill`) ends the session as Ctrl-C does: pytest then runs
    # the session end, which records what never ran and writes the report

    def pytest_sessionstart(self, session):
        if not self.is_worker and threading.current_thread() is threading.main_thread():
            self.previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)

    def pytest_unconfigure(self, config):
        if self.previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self.previous_sigterm)

    # --- end of session: merge, provenance, table

    def pytest_sessionfinish(self, session):
        # --collect-only writes nothing, not even to an existing run of that --run-id; nor
        # does a usage error (a refused --resume): the run stays as it was
        if self.is_worker or not self.run_dir.exists():
            return
        for unread in self.run_dir.glob(".selection-*.json"):  # workers' the session ended on
            unread.unlink(missing_ok=True)
        if self.run.collect_only or session.exitstatus == pytest.ExitCode.USAGE_ERROR:
            return
        run = read_run(self.run_dir) or {}
        rows = latest_rows(load_records(self.run_dir))
        extra = session_records(rows, self.settings)
        if rows and all(r.get("outcome") == "skipped" for r in rows):
            # A gate that measured nothing must not pass.
            extra.append({"suite": "run", "case": "selection", "test": "-", "outcome": "failed",
                          "passed": False, "reason": f"no case was measured: all {len(rows)} "
                                                     "selected were skipped"})
        incomplete = self.run.incomplete(session, run, rows)
        if incomplete or any(map(is_completion, rows)):  # a resume replaces a failing one
            extra.append(completion_record(incomplete, selected_count(run)))
        recorded = [self.run.record(row) for row in extra]
        # An interrupted session keeps pytest's own status (2).
        if not all(row["passed"] for row in recorded) and session.exitstatus in (
                pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self.run.write_run_json(run, named_baselines.failed_names(recorded), incomplete)
        from harness.report.render import publish

        self.rows = latest_rows(rows + recorded)
        self.report = publish(self.run_dir, self.rows, move_latest=self.executed > 0)

    def pytest_terminal_summary(self, terminalreporter):
        if self.rows is None:  # a worker, --collect-only, or a run that recorded nothing
            return
        from harness.report.render import run_verdict

        table = summary_table(self.run_dir, self.rows)
        if table:
            terminalreporter.write_sep("=", f"llmgate results: {self.run_dir}")
            terminalreporter.write_line(table)
        verdict = run_verdict(read_run(self.run_dir), self.rows)
        terminalreporter.write_line(f"llmgate {verdict['title']}" + (
            f": {verdict['why']}" if verdict["why"] else ""), bold=True,
            **{{"pass": "green", "measured": "yellow"}.get(verdict["state"], "red"): True})
        terminalreporter.write_line(f"report: {self.report}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"{signal.Signals(signum).name}: the run was stopped")


def _tests(items, exclude=()) -> set[tuple[str, str, str]]:
    """(suite, case, test) of the case items, as their records name them."""
    excluded = set(exclude)
    return {(item.path.parent.name, case.id, item.originalname) for item in items
            if item not in excluded and (case := case_of(item)) is not None}


def pytest_configure(config: pytest.Config) -> None:
    plugin = LlmgatePlugin(config)
    config.stash[LLMGATE] = plugin
    config.pluginmanager.register(plugin, "llmgate-session")  # "llmgate" is the entry point

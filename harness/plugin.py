"""The pytest plugin behind the suites: settings, runner pool, hardware gating, results.

Options are declared in `harness.options` and checked at start-up (`harness.settings`);
the suites' conftest files read the plugin from `config.stash[LLMGATE]` and expand their grids
(`harness.{numerics,perf,accuracy}.grid`). Every suite test that runs a `Case` leaves exactly
one record, written from pytest's report hook so that no suite can forget it: passed, failed,
error (with its one-line reason) or skipped (with the reason), plus whatever metrics the test
passed to `record(...)`. At the end of the session the run's rows are read once, each suite's
session end adds what only the whole run shows (`SESSION_ENDS`), and the same rows go to the
CSVs, the report and the console table, which therefore always agree with pytest's exit
status. The run's selection is written into run.json as soon as it is known, so that a run
that ends before it ran every selected test says so (`harness.selection`); SIGTERM ends the
session as Ctrl-C does, so that a killed run still finishes its records and report.
"""

from __future__ import annotations

import json
import shlex
import signal
import threading
import time
import zlib

import pytest

from harness import named_baselines
from harness.accuracy import session as accuracy_session
from harness.cases import Case
from harness.devices import get_backend, pinned_precision
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
from harness.perf import session as perf_session
from harness.results import (
    RECORD_FORMAT,
    ResultsStore,
    environment,
    latest_rows,
    load_records,
    new_run_id,
    summary_table,
)
from harness.selection import (
    completion_record,
    is_completion,
    never_ran,
    read_run,
    resume_refusal,
    selected_count,
    selection,
    shard_models,
    write_json,
    write_run,
)
from harness.settings import Settings
from harness.values import checked_run_id
from harness.verdicts import Verdict
from models.quant import int8_kernel

# Each suite's session end: (the run's latest rows, settings) -> records of the whole run.
SESSION_ENDS = (perf_session.finish, accuracy_session.finish)


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
    def __init__(self, config: pytest.Config):
        workerinput = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        self.settings = Settings.from_config(config)
        if self.is_worker:
            self.run_id, self.session, self.command = workerinput["llmgate_run"]
            self.worker = workerinput["workerid"]
        else:
            given = config.getoption("--run-id")
            self.run_id = new_run_id() if given is None else checked_run_id(given)
            self.session, self.worker = time.time_ns(), "main"
            self.command = shlex.join(["pytest", *config.invocation_params.args])
        self.run_dir = self.settings.results_root / self.run_id
        self.collect_only = config.getoption("--collect-only")
        self.executed = 0  # tests this session ran (xdist: reported by the workers)
        self.started = time.time()
        self.store: ResultsStore | None = None
        self.rows: list[dict] | None = None  # the run's latest rows, once the session ended
        self.resume = resume = config.getoption("--resume")
        self.previous_sigterm = None
        self.selected: dict | None = None  # this session's selection, once the controller has it
        recorded = load_records(self.run_dir)
        if not self.is_worker:
            if resume and not config.getoption("--run-id"):
                raise pytest.UsageError("--resume needs the --run-id of the run to resume")
            # An interrupted accuracy case leaves answers before any record: resumable.
            started = self.run_dir.is_dir() and any(self.run_dir.iterdir())
            if resume and not (recorded or started):
                raise pytest.UsageError(f"--resume: run {self.run_id!r} has no records in "
                                        f"{self.run_dir}")
            if started and not resume and not self.collect_only:
                what = "records" if recorded else "files"  # killed before its first record
                raise pytest.UsageError(f"--run-id {self.run_id!r} already has {what} in "
                                        f"{self.run_dir}; pass --resume to continue it, or "
                                        "choose another --run-id")
        self.recorded = ({(r["case"], r["test"]): r for r in latest_rows(recorded)}
                         if resume else {})

    def results(self) -> ResultsStore:
        if self.store is None:  # created on first record: runs that record nothing leave no dir
            self.store = ResultsStore(self.run_dir, self.worker)
        return self.store

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node):  # xdist: workers share the controller's run
        node.workerinput["llmgate_run"] = (self.run_id, self.session, self.command)

    @pytest.hookimpl(trylast=True)  # after -k and -m have deselected
    def pytest_collection_modifyitems(self, config, items):
        shard = self.settings.shard
        drop = [item for item in items if case_of(item) is None and has_case_param(item)]
        whole = _tests(items, exclude=drop)
        if shard is not None:
            owner = shard_models([c.model for item in items if (c := case_of(item))], shard[1])
            drop += [item for item in items if (owner.get(case_of(item).model) if case_of(item)
                     else zlib.crc32(item.nodeid.encode()) % shard[1]) != shard[0] - 1]
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = [item for item in items if item not in set(drop)]
        items[:] = grouped(items, case_of, lambda item: item.path.parent)
        for item in items:  # with --dist loadgroup, each model's cases share a worker
            if (case := case_of(item)) is not None:
                item.add_marker(pytest.mark.xdist_group(case.model))
        if whole:  # a run that selects no case leaves no directory
            ours = selection(_tests(items), whole, self.command)
            if self.is_worker:  # the controller checks it and owns run.json
                if not self.collect_only:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    write_json(self.run_dir / f".selection-{self.worker}.json", ours)
            else:
                self._select(ours)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        path = self.run_dir / f".selection-{node.gateway.id}.json"
        if path.exists():  # each worker collected alike: the first one's is the selection
            ours = json.loads(path.read_text())
            path.unlink()
            if self.selected is None:
                self._select(ours)

    def _select(self, ours: dict) -> None:
        """Refuse a --resume that selects other tests of a suite than its run did; record the
        selection in run.json, with the run "running" (--collect-only writes nothing)."""
        self.selected = ours
        run = read_run(self.run_dir) or {}
        refusal = self.resume and resume_refusal(run.get("selection", {}), ours, self.run_id)
        if refusal:
            raise pytest.UsageError(refusal)
        if self.collect_only:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        shard = self.settings.shard
        write_run(self.run_dir, {
            **run, "format": RECORD_FORMAT, "run_id": self.run_id, "status": "running",
            "started": min(self.started, run.get("started", self.started)),
            **({"shard": f"{shard[0]}/{shard[1]}"} if shard else {}),
            "selection": {**run.get("selection", {}), **ours}})

    # --- resume: a recorded pass is skipped, a recorded failure fails again (as FAILED)

    def _recorded(self, item) -> dict | None:
        case = case_of(item)
        return case is not None and self.recorded.get((case.id, item.originalname))

    def pytest_runtest_setup(self, item):
        if (case := case_of(item)) is not None:
            start_case_peaks(case.hardware)
        row = self._recorded(item)
        if row and row.get("outcome", "passed" if row["passed"] else "failed") == "passed":
            item.stash[OUTCOME] = {"resumed": True}
            pytest.skip(f"already recorded in run {self.run_id}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem):
        row = self._recorded(pyfuncitem)
        if row and row.get("outcome", "failed") in ("failed", "error"):
            pyfuncitem.stash[OUTCOME] = {"resumed": True}
            reason = row.get("reason") or row.get("failures") or "see its records"
            pytest.fail(f"recorded as failed in run {self.run_id}: {reason}", pytrace=False)

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
                "config_source": self.settings.config_source(case.model),
                "session": self.session, "worker": self.worker}
        if core["port_kind"] == "engine" and case.precision.scheme:
            fields["int8_kernel"] = int8_kernel(case.precision, case.hardware)
        measured = {**fields, **state.get("metrics", {})}
        self.results().record({**core, **{k: v for k, v in measured.items() if k not in core}})

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
        if self.collect_only or session.exitstatus == pytest.ExitCode.USAGE_ERROR:
            return
        run = read_run(self.run_dir) or {}
        rows = latest_rows(load_records(self.run_dir))
        extra = [row for finish in SESSION_ENDS for row in finish(rows, self.settings)]
        if rows and all(r.get("outcome") == "skipped" for r in rows):
            # A gate that measured nothing must not pass.
            extra.append({"suite": "run", "case": "selection", "test": "-", "outcome": "failed",
                          "passed": False, "reason": f"no case was measured: all {len(rows)} "
                                                     "selected were skipped"})
        incomplete = self._incomplete(session, run, rows)
        if incomplete or any(map(is_completion, rows)):  # a resume replaces a failing one
            extra.append(completion_record(incomplete, selected_count(run)))
        recorded = [self.results().record({**row, "session": self.session,
                                           "worker": self.worker}) for row in extra]
        # An interrupted session keeps pytest's own status (2).
        if not all(row["passed"] for row in recorded) and session.exitstatus in (
                pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self._write_run_json(run, named_baselines.failed_names(recorded), incomplete)
        from harness.report.render import publish

        self.rows = latest_rows(rows + recorded)
        self.report = publish(self.run_dir, self.rows, move_latest=self.executed > 0)

    def _incomplete(self, session, run: dict, rows: list[dict]) -> str:
        """Why the run has not run all it selected, in one line, or "" when it has."""
        interrupted = session.exitstatus == pytest.ExitCode.INTERRUPTED
        if not run.get("selection"):
            return "interrupted before its selection was known" if interrupted else ""
        missing = never_ran(run, rows)
        if not missing:
            return ""
        why = "interrupted" if interrupted else (session.shouldfail or session.shouldstop
                                                 or "the session ended before them")
        return f"{len(missing)} of {selected_count(run)} selected cases never ran: {why}"

    def _write_run_json(self, run: dict, unmatched_baselines: list[str], incomplete: str):
        devices, precision = {}, {}
        for hardware in self.settings.hardware:
            backend = get_backend(hardware)
            if backend.available:
                devices[hardware] = backend.device_name()
                precision[hardware] = pinned_precision(backend)
        started = min(self.started, run.get("started", self.started))  # a resumed run's first
        run = {**run, "format": RECORD_FORMAT, "run_id": self.run_id, "started": started,
               "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
               "duration_s": time.time() - started, "devices": devices,
               "fp32_settings": precision,
               "unmatched_baselines": unmatched_baselines, **environment(),
               "status": "incomplete" if incomplete else "complete", "incomplete": incomplete}
        write_run(self.run_dir, run)

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

"""One run as the plugin keeps it: its id and directory, what a --resume may reuse of it, its
selection and status in run.json, and its records. Hooks live in `harness.plugin`; this
holds the state they share."""

from __future__ import annotations

import shlex
import time

import pytest

from harness.devices import get_backend, pinned_precision
from harness.results import (
    RECORD_FORMAT,
    ResultsStore,
    environment,
    latest_rows,
    load_records,
    new_run_id,
)
from harness.selection import never_ran, read_run, resume_refusal, selected_count, write_run
from harness.settings import Settings
from harness.values import checked_run_id


class RunSession:
    """The run this pytest session adds to: a new one, or with --resume the one given."""

    def __init__(self, config: pytest.Config, settings: Settings):
        workerinput = getattr(config, "workerinput", None)
        self.settings = settings
        self.is_worker = workerinput is not None
        if self.is_worker:
            self.run_id, self.session, self.command = workerinput["llmgate_run"]
            self.worker = workerinput["workerid"]
        else:
            given = config.getoption("--run-id")
            self.run_id = new_run_id() if given is None else checked_run_id(given)
            self.session, self.worker = time.time_ns(), "main"
            self.command = shlex.join(["pytest", *config.invocation_params.args])
        self.run_dir = settings.results_root / self.run_id
        self.collect_only = config.getoption("--collect-only")
        self.started = time.time()
        self.store: ResultsStore | None = None
        self.resume = resume = config.getoption("--resume")
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

    def record(self, row: dict) -> dict:
        return self.results().record({**row, "session": self.session, "worker": self.worker})

    def select(self, ours: dict) -> None:
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

    def incomplete(self, session: pytest.Session, run: dict, rows: list[dict]) -> str:
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

    def write_run_json(self, run: dict, unmatched_baselines: list[str], incomplete: str):
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

"""The pytest plugin behind the suites: settings, runner pool, hardware gating, results.

Options are declared in the root `conftest.py`; this module turns them into `Settings`,
provides the fixtures the suites use and merges the results store at the end of the session.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import pytest

from harness.cases import Case
from harness.checkpoints import embedded_checkpoint, verify_checkpoint
from harness.devices import BACKENDS, DTYPES, get_backend
from harness.results import (
    ResultsStore,
    environment,
    load_records,
    merge,
    new_run_id,
    summary_table,
)
from harness.runners import PortedRunner, ReferenceRunner
from models.checkpoint import CheckpointError
from models.config import EMBEDDED_MODELS, REGISTRY


def split_values(values: list[str] | None) -> list[str]:
    """Repeatable options also take comma-separated lists: --dtype fp32,bf16."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


@dataclass
class Settings:
    models: list[str]
    model_paths: dict[str, Path]
    hardware: list[str]
    dtypes: list[str]
    batches: list[int]
    seqlens: list[int]
    decode_steps: int
    require_hardware: bool
    cache_dir: Path | None
    run_dir: Path
    worker: str = "main"
    _resolved: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: pytest.Config, run_id: str) -> Settings:
        opt = config.getoption
        models = split_values(opt("--model")) or list(EMBEDDED_MODELS)
        _check_names("--model", models, REGISTRY)
        model_paths = {}
        for item in opt("--model-path") or []:
            name, sep, path = item.partition("=")
            if not sep or not path:
                raise pytest.UsageError(f"--model-path {item!r}: expected NAME=DIR")
            _check_names("--model-path", [name], REGISTRY)
            model_paths[name] = Path(path).expanduser()
        hardware = split_values(opt("--hardware")) or ["cpu"]
        _check_names("--hardware", hardware, BACKENDS)
        dtypes = split_values(opt("--dtype")) or ["fp32", "bf16"]
        _check_names("--dtype", dtypes, DTYPES)
        cache_dir = opt("--cache-dir")
        return cls(models, model_paths, hardware, dtypes,
                   _ints("--batch", opt("--batch"), [1, 4]),
                   _ints("--seqlen", opt("--seqlen"), [32, 128]),
                   opt("--decode-steps"), opt("--require-hardware"),
                   Path(cache_dir) if cache_dir else None,
                   Path(opt("--results-dir")) / run_id)

    def cases(self, *, dtypes=None, batches=None, seqlens=None) -> list[Case]:
        """The grid, model-major so that each model is loaded once per process."""
        return [Case(m, h, d, b, s) for m, h, d, b, s in product(
            self.models, self.hardware, dtypes or self.dtypes, batches or self.batches,
            seqlens or self.seqlens)]

    def has_pretrained(self, model: str) -> bool:
        return model in self.model_paths or model == "smollm2-135m"

    def checkpoint(self, model: str) -> Path:
        """Weights for a model: --model-path, else the embedded cache; skip with a hint.

        Resolved (verified or built) once per process, not once per test.
        """
        if model not in self._resolved:
            self._resolved[model] = self._resolve(model)
        return self._resolved[model]

    def _resolve(self, model: str) -> Path:
        if model in self.model_paths:
            try:
                verify_checkpoint(model, self.model_paths[model])
            except CheckpointError as e:
                pytest.fail(f"--model-path {model}: {e}", pytrace=False)
            return self.model_paths[model]
        if model not in EMBEDDED_MODELS:
            pytest.skip(f"{model}: no weights; pass --model-path {model}=/path/to/checkpoint")
        return embedded_checkpoint(model, self.cache_dir)


def _check_names(option: str, values: list[str], valid) -> None:
    for value in values:
        if value not in valid:
            raise pytest.UsageError(f"{option} {value!r} is unknown; valid: {', '.join(valid)}")


def _ints(option: str, values: list[str] | None, default: list[int]) -> list[int]:
    parsed = []
    for item in split_values(values):
        if not item.isdigit() or int(item) == 0:
            raise pytest.UsageError(f"{option} {item!r}: expected a positive integer")
        parsed.append(int(item))
    return parsed or default


class RunnerPool:
    """Loaded runners, reused across tests; only the most recent few models stay in memory."""

    def __init__(self, settings: Settings, keep_models: int = 2):
        self.settings, self.keep_models = settings, keep_models
        self._runners: OrderedDict[tuple, object] = OrderedDict()

    def _get(self, key: tuple, make):
        if key not in self._runners:
            models = list(dict.fromkeys(k[1] for k in self._runners))
            if key[1] not in models and len(models) >= self.keep_models:
                evict = models[0]
                for k in [k for k in self._runners if k[1] == evict]:
                    del self._runners[k]
            self._runners[key] = make()
        self._runners.move_to_end(key)
        return self._runners[key]

    def ported(self, case: Case) -> PortedRunner:
        backend = get_backend(case.hardware)
        ok, reason = backend.availability()
        if ok and case.dtype not in backend.dtypes():
            ok, reason = False, f"{case.dtype} is not supported on {case.hardware}"
        if not ok:
            if self.settings.require_hardware:
                pytest.fail(f"{case.hardware} required but unavailable: {reason}", pytrace=False)
            pytest.skip(f"{case.hardware}: {reason}")
        path = self.settings.checkpoint(case.model)
        return self._get(("ported", case.model, case.hardware, case.dtype), lambda: PortedRunner(
            path, hardware=backend, dtype=DTYPES[case.dtype]))

    def reference(self, model: str, dtype: str = "fp32") -> ReferenceRunner:
        path = self.settings.checkpoint(model)
        return self._get(("reference", model, dtype),
                         lambda: ReferenceRunner(path, dtype=DTYPES[dtype]))


class LlmgatePlugin:
    def __init__(self, config: pytest.Config):
        workerinput = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        run_id = workerinput["llmgate_run_id"] if self.is_worker else (
            config.getoption("--run-id") or new_run_id())
        self.run_id = run_id
        self.settings = Settings.from_config(config, run_id)
        if self.is_worker:
            self.settings.worker = workerinput["workerid"]
        self.store: ResultsStore | None = None
        self.recorded: dict[tuple[str, str], dict] = {}
        if config.getoption("--resume"):
            if not config.getoption("--run-id"):
                raise pytest.UsageError("--resume needs the --run-id of the run to resume")
            self.recorded = {(r["case"], r["test"]): r for r in load_records(self.settings.run_dir)}

    def results(self) -> ResultsStore:
        if self.store is None:  # created on first record: runs that record nothing leave no dir
            self.store = ResultsStore(self.settings.run_dir, self.settings.worker)
        return self.store

    def pytest_runtest_setup(self, item):
        """With --resume: a recorded pass is skipped, a recorded failure fails again."""
        case = getattr(item, "callspec", None) and item.callspec.params.get("case")
        row = case is not None and self.recorded.get((case.id, item.originalname))
        if row and row["passed"]:
            pytest.skip(f"already recorded in run {self.run_id}")
        if row:
            reason = row.get("failures") or "see its records"
            pytest.fail(f"recorded as failed in run {self.run_id}: {reason}", pytrace=False)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node):  # xdist: workers share the controller's run id
        node.workerinput["llmgate_run_id"] = self.run_id

    def pytest_sessionfinish(self, session):
        if not self.is_worker and self.settings.run_dir.exists():
            (self.settings.run_dir / "run.json").write_text(json.dumps(
                {"run_id": self.run_id, **environment()}, indent=2))
            merge(self.settings.run_dir)

    def pytest_terminal_summary(self, terminalreporter):
        if self.is_worker or not self.settings.run_dir.exists():
            return
        table = summary_table(self.settings.run_dir)
        if table:
            terminalreporter.write_sep("=", f"llmgate results: {self.settings.run_dir}")
            terminalreporter.write_line(table)


def pytest_configure(config: pytest.Config) -> None:
    plugin = LlmgatePlugin(config)
    config._llmgate = plugin
    config.pluginmanager.register(plugin, "llmgate")


@pytest.fixture(scope="session")
def llmgate(pytestconfig) -> Settings:
    return pytestconfig._llmgate.settings


@pytest.fixture(scope="session")
def runner_pool(llmgate) -> RunnerPool:
    return RunnerPool(llmgate)


@pytest.fixture
def record(request, pytestconfig):
    """record(case, passed, **metrics): one results-store row for this test."""
    plugin = pytestconfig._llmgate
    suite = Path(str(request.node.path)).parent.name

    def _record(case: Case, passed: bool, **metrics) -> dict:
        return plugin.results().record(suite, case.id, request.node.originalname, passed,
                                       **metrics)
    return _record

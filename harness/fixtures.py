"""The llmgate plugin's fixtures (`llmgate`, `runner_pool`, `run_dir`, `record`) and the keys
its hooks and the suites share: `LLMGATE` finds this session's plugin in `config.stash`,
`OUTCOME` a test's state for its one record."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cases import Case
from harness.devices import QUANTIZED
from harness.pool import RunnerPool
from harness.settings import Settings
from harness.verdicts import Verdict

OUTCOME = pytest.StashKey[dict]()


def has_case_param(item) -> bool:
    return "case" in getattr(getattr(item, "callspec", None), "params", {})


def case_of(item) -> Case | None:
    case = item.callspec.params.get("case") if has_case_param(item) else None
    return case if isinstance(case, Case) else None


LLMGATE = pytest.StashKey["LlmgatePlugin"]()  # config.stash[LLMGATE]: this session's plugin


@pytest.fixture(scope="session")
def llmgate(pytestconfig) -> Settings:
    return pytestconfig.stash[LLMGATE].settings


@pytest.fixture(scope="session")
def runner_pool(pytestconfig, llmgate, run_dir):
    pool = RunnerPool(llmgate, pytestconfig.stash[LLMGATE].weights, run_dir=run_dir)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def run_dir(pytestconfig) -> Path:
    """This run's results directory (reports/<run-id>/), where suites keep their files."""
    return pytestconfig.stash[LLMGATE].run_dir


@pytest.fixture
def record(request):
    """record(verdict=None, **metrics): what this test measured, for its one record.

    The record itself is written when the test ends, with pytest's outcome; a failing
    verdict fails the test even if the suite forgets to assert.
    """
    state = request.node.stash.setdefault(OUTCOME, {})
    case = case_of(request.node)
    if case is not None and case.dtype in QUANTIZED:  # which float type the activations are
        state.setdefault("metrics", {})["activation_dtype"] = case.precision.dtype_name

    def _record(verdict: Verdict | None = None, **metrics) -> None:
        state["verdict"] = verdict
        state.setdefault("metrics", {}).update(metrics)
    return _record

"""Parametrization of the perf suite from the llmgate options."""

from harness.perf import grid
from harness.plugin import LLMGATE, parametrize_cases


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    settings = metafunc.config.stash[LLMGATE].settings
    perf = settings.suites["perf"]
    name = metafunc.function.__name__
    # a search runs its own test: --max-batch in place of the grid, --max-rate beside it
    if perf.max_batch or name == "test_max_batch":
        cases = grid.cases(settings) if perf.max_batch and name == "test_max_batch" else []
    else:
        cases = [c for c in grid.cases(settings)
                 if ("rmax" in c.tags) == (name == "test_max_rate")]
    parametrize_cases(metafunc, cases)

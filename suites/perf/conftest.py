"""Parametrization of the perf suite from the llmgate options."""

from harness.perf import grid
from harness.plugin import LLMGATE, parametrize_cases


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    settings = metafunc.config.stash[LLMGATE].settings
    max_batch = metafunc.function.__name__ == "test_max_batch"
    cases = grid.cases(settings) if settings.perf.max_batch == max_batch else []
    parametrize_cases(metafunc, cases)

"""Parametrization of the perf suite from the llmgate options."""

from harness.perf import grid
from harness.plugin import LLMGATE, parametrize_cases


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    settings = metafunc.config.stash[LLMGATE].settings
    perf = settings.suites["perf"]
    # a search (--max-batch, --max-rate) runs its own test in place of the grid's
    runs = ("test_max_batch" if perf.max_batch else
            "test_max_rate" if perf.served_load.max_rate else "test_perf")
    parametrize_cases(metafunc, grid.cases(settings) if metafunc.function.__name__ == runs
                      else [])

"""Parametrization of the accuracy suite from the llmgate options."""

from harness.accuracy import grid
from harness.plugin import LLMGATE, parametrize_cases


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    settings = metafunc.config.stash[LLMGATE].settings
    if metafunc.function.__name__ == "test_humaneval":
        cases = [case for task in ("humaneval", "humaneval-instruct")
                 for case in grid.cases(settings, task)]
    else:
        cases = [case for task in ("ceval", "mmlu", "ceval-cloze", "mmlu-cloze")
                 for case in grid.cases(settings, task)]
    parametrize_cases(metafunc, cases)

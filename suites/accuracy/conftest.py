"""Parametrization of the accuracy suite from the llmgate options."""

from harness.plugin import parametrize_cases


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    settings = metafunc.config._llmgate.settings
    if metafunc.function.__name__ == "test_humaneval":
        cases = settings.accuracy_cases("humaneval")
    else:
        cases = settings.accuracy_cases("ceval") + settings.accuracy_cases("mmlu")
    parametrize_cases(metafunc, cases)

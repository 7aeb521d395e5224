"""Parametrization of the perf suite from the llmgate options."""

from harness.plugin import parametrize_cases


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    settings = metafunc.config._llmgate.settings
    max_batch = metafunc.function.__name__ == "test_max_batch"
    cases = settings.perf_cases() if settings.perf.max_batch == max_batch else []
    parametrize_cases(metafunc, cases)

"""Parametrization of the numerics suite from the llmgate options."""

import pytest

from harness.cases import Case
from harness.numerics import load_thresholds

GREEDY_NEW_TOKENS = 32


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    settings = metafunc.config._llmgate.settings
    name = metafunc.function.__name__
    if name == "test_padding_invariance":  # needs a padded batch
        cases = [c for c in settings.cases() if c.batch > 1]
    elif name == "test_greedy_generation":  # exact token equality: fp32 runs only
        cases = [Case(c.model, c.hardware, c.dtype, 2, c.seqlen, GREEDY_NEW_TOKENS)
                 for c in settings.cases(batches=[2], seqlens=[min(settings.seqlens)])
                 if c.dtype == "fp32"]
    else:
        cases = settings.cases()
    metafunc.parametrize("case", cases, ids=str)


@pytest.fixture(scope="session")
def thresholds():
    return load_thresholds()

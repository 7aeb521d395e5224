"""Parametrization of the numerics suite from the llmgate options."""

import pytest

from harness.numerics import grid
from harness.numerics.teacher_forced import load_thresholds
from harness.plugin import LLMGATE, parametrize_cases

# The padding check reruns every row alone (and against the reference in bf16/fp16): a few
# decode steps show whether padding leaks into later positions.
PADDING_STEPS = 4


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    settings = metafunc.config.stash[LLMGATE].settings
    name = metafunc.function.__name__
    if name == "test_padding_invariance":  # needs a padded batch; runs each row alone too
        # (a served port's case is kept, to record why it cannot run)
        cases = [c for c in grid.cases(settings, out=min(settings.decode_steps, PADDING_STEPS))
                 if c.batch > 1 or settings.port(c).served]
    elif name == "test_greedy_generation":  # exact token equality: fp32 runs only
        cases = [c for c in grid.cases(settings, batches=[2], seqlens=[min(settings.seqlens)],
                                       out=grid.GREEDY_NEW_TOKENS)
                 if c.dtype == "fp32" or settings.port(c).served]
    else:
        cases = grid.cases(settings)
    parametrize_cases(metafunc, cases)


@pytest.fixture(scope="session")
def thresholds():
    return load_thresholds()

"""Did the port keep the reference's accuracy? C-Eval, MMLU and HumanEval, question by question.

Multiple-choice tasks score the four answer letters' next-token log-probabilities; HumanEval
executes completions in the sandbox. Each case is gated against every comparable stored
baseline: per question with a paired test, or against the source documents' tables.
"""

import pytest

from harness.accuracy.case import humaneval_case, multiple_choice_case
from harness.runners import Served

pytestmark = pytest.mark.accuracy


def runner_for(case, runner_pool, llmgate, record):
    if llmgate.suites["accuracy"].runner == "reference":
        return runner_pool.reference(case.model, case.dtype)
    runner = runner_pool.ported(case)
    if isinstance(runner, Served):
        record(**runner.describe())
    return runner


def test_multiple_choice(case, runner_pool, llmgate, run_dir, record):
    runner = runner_for(case, runner_pool, llmgate, record)
    max_positions = runner_pool.config(case.model).max_positions
    result, metrics = multiple_choice_case(case, runner, runner_pool.tokenizer(case.model),
                                           llmgate, run_dir, max_positions)
    record(result, **metrics)
    assert result.passed, f"{case}: {result.message()}"


def test_humaneval(case, runner_pool, llmgate, run_dir, record):
    from harness.sandbox import Limits, Sandbox, SandboxUnavailable

    runner = runner_for(case, runner_pool, llmgate, record)
    try:
        sandbox = Sandbox(Limits(timeout_s=llmgate.suites["accuracy"].timeout),
                          allow_unsandboxed=llmgate.suites["accuracy"].allow_unsandboxed)
    except SandboxUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    result, metrics = humaneval_case(case, runner, runner_pool.tokenizer(case.model), sandbox,
                                     llmgate, run_dir)
    record(result, **metrics)
    assert result.passed, f"{case}: {result.message()}"

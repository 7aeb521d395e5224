"""How fast the port is: the source documents' perf grid, against stored baselines.

Each case times a fixed-length request phase by phase (see harness/perf/timing.py), writes
the seeds' CSV columns and gates against every matching baseline (harness/perf/gate.py).
"""

import pytest

from harness.devices import QUANTIZED
from harness.perf.case import max_batch_case, perf_case, terminal_lines

pytestmark = pytest.mark.perf


def test_perf(case, runner_pool, llmgate, record):
    """A served port: streaming clients at its --concurrency level (harness/perf/served.py)."""
    settings = llmgate.suites["perf"]
    if llmgate.port(case).served:
        from harness.perf.served import served_perf_case

        result, metrics = served_perf_case(case, runner_pool.ported(case),
                                           runner_pool.tokenizer(case.model), settings)
        record(result, **metrics)
        assert result.passed, f"{case}: {result.message()}"
        return
    runner = runner_pool.ported(case, compile=settings.compile, device_logits=True)
    reference = None
    if settings.reference and case.hardware == "cpu":  # int8 cases: against transformers fp32
        reference = runner_pool.reference(case.model, "fp32" if case.dtype in QUANTIZED
                                          else case.dtype)
    result, metrics = perf_case(case, runner, runner_pool.tokenizer(case.model),
                                runner_pool.backend(case), settings, reference)
    record(result, compile=settings.compile, **metrics)
    assert result.passed, f"{case}: {result.message()}"


def test_max_batch(case, runner_pool, llmgate, record, pytestconfig):
    if llmgate.tp > 1:
        pytest.skip("the max-batch search runs one process (--tp 1)")
    backend = runner_pool.backend(case)
    result, metrics = max_batch_case(case, runner_pool.weights.checkpoint(case.model), backend,
                                     llmgate.suites["perf"], terminal_lines(pytestconfig))
    record(result, **metrics)
    assert result.passed, f"{case}: {result.message()}"


def test_max_rate(case, runner_pool, llmgate, record, pytestconfig):
    """A served port's highest request rate at which --max-rate-percent of requests meet
    every --goodput target, each probe printed as it ends (harness/perf/served.py)."""
    from harness.perf.served import served_max_rate_case

    result, metrics = served_max_rate_case(case, runner_pool.ported(case),
                                           runner_pool.tokenizer(case.model),
                                           llmgate.suites["perf"], terminal_lines(pytestconfig))
    record(result, **metrics)
    assert result.passed, f"{case}: {result.message()}"

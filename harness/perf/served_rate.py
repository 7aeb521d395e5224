"""One open-loop load on a served port: prompts from a prompt set, sent at a request rate.

The arrivals, the concurrency cap and each request's timings are harness/perf/load.py's;
the prompts harness/perf/prompt_sets.py's. A request the endpoint fails (refused, dropped,
an HTTP error) is kept as failed with its error, as vLLM keeps it: it is counted, never
timed, and never good. Every statistic here is over requests (ITL over every gap of the
completed requests, which the noise tests never pool).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.perf.goodput import Goodput, goodput_metrics
from harness.perf.load import (
    Request,
    ServedLoad,
    arrival_offsets,
    latency_metrics,
    length_histogram,
    one_request,
    run_load,
)
from harness.perf.prompt_sets import PromptSet, prompt_set
from harness.perf.serving_json import peak_concurrency, serving_json, write_serving_json
from harness.ports.openai import EndpointError


@dataclass
class RateRun:
    """One load at one rate: its requests in the order sent, its duration and metrics."""

    rate: float
    requests: list[Request]
    duration_s: float
    metrics: dict


def load_prompts(load: ServedLoad, tokenizer, runner, in_len: int, out: int) -> PromptSet:
    """The load's prompt set for a case of input length `in_len` and `out` new tokens;
    prompts that would not fit the model's positions with their output are passed over."""
    positions = runner.config.max_positions
    return prompt_set(load.prompts, tokenizer, load.num_requests, load.seed, length=in_len,
                      out=out, output_spec=load.output_lengths, ceval_dir=load.ceval_dir,
                      max_input_len=None if positions is None else positions - 2 * out)


def run_rate(runner, tokenizer, prompts: PromptSet, rate: float, load: ServedLoad,
             max_concurrency: int | None) -> RateRun:
    """Send the prompts at `rate` requests/s (burstiness and seed from `load`)."""
    offsets = arrival_offsets(len(prompts.texts), rate, load.burstiness, load.seed)

    def send(item: tuple[str, int]) -> Request:
        text, out = item
        try:
            return one_request(runner.client, tokenizer, text, out)
        except EndpointError as e:
            return Request(math.nan, [], math.nan, 0, None, error=str(e))

    requests, duration = run_load(send, list(zip(prompts.texts, prompts.output_lens)),
                                  offsets, max_concurrency)
    return RateRun(rate, requests, duration,
                   rate_metrics(requests, duration, prompts, load.goodput))


def rate_metrics(requests: list[Request], duration: float, prompts: PromptSet,
                 goodput: Goodput | None) -> dict:
    """Counts, throughputs, latency percentiles and goodput of one load (vLLM's names)."""
    done = [r for r in requests if not r.error]
    total_out = sum(r.output_tokens for r in done)
    total_in = sum(n for n, r in zip(prompts.input_lens, requests) if not r.error)
    return {
        "num_requests": len(requests), "completed": len(done),
        "failed": len(requests) - len(done), "total_input_tokens": total_in,
        "total_output_tokens": total_out, "duration_s": duration,
        "request_throughput": len(done) / duration, "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
        "max_concurrent_requests": peak_concurrency(done),
        "short_requests": sum(r.output_tokens < asked for r, asked
                              in zip(requests, prompts.output_lens) if not r.error),
        "interrupted_requests": sum(r.finish_reason is None for r in done),
        **latency_metrics(done), **goodput_metrics(requests, goodput, duration)}


def load_record(load: ServedLoad, run: RateRun, prompts: PromptSet,
                max_concurrency: int | None) -> dict:
    """What a rate case's record keeps of its load beside the metrics: the settings, the
    length histograms and, per request, what a later run's goodput gate re-judges."""
    return {
        "request_rate": run.rate, "burstiness": load.burstiness,
        "max_concurrency": max_concurrency, "load_seed": load.seed, "prompts": load.prompts,
        "prompt_source": prompts.source, "output_lengths": load.output_lengths,
        "input_len_histogram": length_histogram(prompts.input_lens),
        "output_len_histogram": length_histogram(
            [r.output_tokens for r in run.requests if not r.error]),
        "input_lens": prompts.input_lens, "requested_output_lens": prompts.output_lens,
        "output_lens": [r.output_tokens for r in run.requests],
        "request_errors": [r.error for r in run.requests],
        "queue_s": [r.queue_s for r in run.requests]}


def failures(run: RateRun) -> list[str]:
    """Why a load's timings are not the server's speed: failed or cut-short requests."""
    found = []
    failed = [r for r in run.requests if r.error]
    if failed:
        found.append(f"{len(failed)} of {len(run.requests)} requests failed: "
                     f"{failed[0].error}")
    cut = [r for r in run.requests if not r.error and r.finish_reason is None]
    if cut:
        found.append(f"{len(cut)} of {len(run.requests)} requests ended with no "
                     f"finish_reason after {min(r.output_tokens for r in cut)} to "
                     f"{max(r.output_tokens for r in cut)} tokens: the server cut them short")
    return found


def save_json(load: ServedLoad, case_id: str, run: RateRun, prompts: PromptSet,
              max_concurrency: int | None, runner, model_id: str) -> str | None:
    """The load as vLLM's result JSON in `load.serving_json_dir` (None: not asked)."""
    if load.serving_json_dir is None:
        return None
    info = runner.describe()
    result = serving_json(run.requests, prompts.input_lens, run.duration_s,
                          request_rate=run.rate, burstiness=load.burstiness,
                          max_concurrency=max_concurrency,
                          model_id=info.get("served_model") or model_id,
                          tokenizer_id=model_id, goodput=load.goodput,
                          backend=info.get("port_kind") or "openai", label=case_id)
    return str(write_serving_json(load.serving_json_dir, case_id, result))

"""The perf case of a served port: streaming requests from concurrent clients.

At concurrency C, C clients each send one streaming `/v1/completions` request at a time, all
started together, `--repeats` rounds (after `--warmup` single requests that are not kept).
Per request, timed on this side of the connection as vLLM's serving benchmark times them:

  ttft    time to first token: from sending the request to its first streamed chunk
  itl     inter-token latency: the gap between consecutive chunks
  tpot    time per output token after the first: (e2el - ttft) / (output tokens - 1)
  e2el    end-to-end latency of the request

Output tokens are the reference tokenizer's count of the streamed text (as vLLM counts them).
A request whose stream ends without a finish_reason was cut short by the server (llama-cpp-
python's server interrupts a stream when another request arrives unless told not to): the
case fails, naming how many, rather than timing requests that were not served.
Reported as mean/median/p90/p99 over requests (ITL over every gap), with output tokens/s and
requests/s over the rounds' wall time. The unit of the noise test is the request (a
request's chunk gaps are not independent samples); the seed CSV's columns get TTFT as the
first token and the mean ITL as the next token.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from harness.cases import Case
from harness.perf.case import baselines, machine_load
from harness.perf.gate import gate
from harness.perf.options import PerfSettings
from harness.perf.timing import SEED_COLUMNS, Samples, prompts, summary
from harness.verdicts import Verdict

PERCENTILES = (50, 90, 99)


@dataclass
class Request:
    ttft_ms: float
    itl_ms: list[float]
    e2el_ms: float
    output_tokens: int
    finish_reason: str | None  # None: the server ended the stream without saying why


def concurrency_of(case: Case) -> int:
    return next(int(t[1:]) for t in case.tags if t[:1] == "c" and t[1:].isdigit())


def one_request(client, tokenizer, text: str, out: int) -> Request:
    start = time.perf_counter()
    arrivals, pieces, finish = [], [], None
    for arrived, piece, reason in client.stream(text, out):
        arrivals.append(arrived)
        pieces.append(piece)
        finish = reason or finish
    if not arrivals:
        arrivals = [time.perf_counter()]
    tokens = len(tokenizer("".join(pieces), add_special_tokens=False).input_ids)
    return Request((arrivals[0] - start) * 1e3, list(np.diff(arrivals) * 1e3),
                   (arrivals[-1] - start) * 1e3, tokens, finish)


def describe(values: list[float], name: str) -> dict:
    if not values:
        return {f"mean_{name}": math.nan, f"median_{name}": math.nan,
                **{f"p{p}_{name}": math.nan for p in PERCENTILES if p != 50}}
    found = {f"mean_{name}": float(np.mean(values)), f"median_{name}": float(np.median(values))}
    found.update({f"p{p}_{name}": float(np.percentile(values, p)) for p in PERCENTILES
                  if p != 50})
    return found


def served_perf_case(case: Case, runner, tokenizer,
                     settings: PerfSettings) -> tuple[Verdict, dict]:
    clients = concurrency_of(case)
    texts = prompts(tokenizer, clients, case.seqlen)
    for _ in range(settings.warmup):
        one_request(runner.client, tokenizer, texts[0], case.out)
    requests, wall = [], 0.0
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(settings.repeats):
            start = time.perf_counter()
            requests += pool.map(lambda t: one_request(runner.client, tokenizer, t, case.out),
                                 texts)
            wall += time.perf_counter() - start
    tpot = [(r.e2el_ms - r.ttft_ms) / (r.output_tokens - 1) for r in requests
            if r.output_tokens > 1]
    output = sum(r.output_tokens for r in requests)
    metrics = {"concurrency": clients, "completed": len(requests), "total_output_tokens": output,
               "short_requests": sum(r.output_tokens < case.out for r in requests),
               "output_throughput": output / wall, "request_throughput": len(requests) / wall,
               "duration_s": wall}
    for name, values in (("ttft_ms", [r.ttft_ms for r in requests]), ("tpot_ms", tpot),
                         ("itl_ms", [gap for r in requests for gap in r.itl_ms]),
                         ("e2el_ms", [r.e2el_ms for r in requests])):
        metrics.update(describe(values, name))
    samples = Samples(response_s=[r.e2el_ms / 1e3 for r in requests],
                      first_token_ms=[r.ttft_ms for r in requests],
                      decode_ms=[r.itl_ms for r in requests])
    seed = summary(samples, clients, case.seqlen, case.out)
    # pre/post are phases of our own loop; a server's requests do not show them
    seed.update({column: math.nan for column in SEED_COLUMNS[6:]})
    seed["batch_size"] = clients
    device = runner.describe().get("server") or runner.spec.name
    rows, ours = baselines(settings.baselines_dir, settings.baseline_names())
    result, comparisons = gate(case, samples, device, rows, ours, settings.tolerance,
                               settings.min_ratio, settings.assume_unit)
    bad = [c for c in SEED_COLUMNS[3:6] if not seed[c] >= 0]
    if bad:  # a gate fails on what it cannot measure
        result.failures.append(f"not measurable: {', '.join(bad)}")
        result.passed = False
    cut = [r for r in requests if r.finish_reason is None]
    metrics["interrupted_requests"] = len(cut)
    if cut:  # timings of requests the server dropped are not the server's speed
        result.failures.insert(0, f"{len(cut)} of {len(requests)} requests ended with no "
                                  f"finish_reason after {min(r.output_tokens for r in cut)} to "
                                  f"{max(r.output_tokens for r in cut)} tokens of {case.out}: "
                                  "the server cut them short")
        result.passed = False
    return result, {**seed, **metrics, "device": device, **machine_load(),
                    "samples": samples.as_dict(), "comparisons": comparisons,
                    **runner.describe()}

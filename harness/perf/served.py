"""The perf cases of a served port: concurrent clients, request rates, the highest rate.

A case's tags say which load it runs:
  c<N>       closed loop: N clients each send one streaming `/v1/completions` request at a
             time, all started together, `--repeats` rounds (after `--warmup` single
             requests that are not kept)
  r<RATE>    open loop (`r2.0`, `rinf`): `num_requests` prompts of the prompt set arrive at
             RATE requests/s, Poisson or gamma (harness/perf/load.py); a `c<N>` beside it
             caps the requests in flight. Goodput against the targets, the length
             histograms, and the vLLM result JSON where asked (harness/perf/served_rate.py)
  rmax       the max-rate search: the highest rate at which at least P% of requests meet
             every goodput target (harness/perf/max_rate.py), recording each probe and the
             percentiles there; a `c<N>` beside it caps the requests in flight

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
requests/s over the load's wall time. The unit of the noise test is the request (a
request's chunk gaps are not independent samples); the seed CSV's columns get TTFT as the
first token and the mean ITL as the next token.
"""

from __future__ import annotations

import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from harness.cases import Case
from harness.perf.case import baselines, machine_load
from harness.perf.gate import gate
from harness.perf.goodput import good, goodput_comparisons
from harness.perf.load import Request, ServedLoad, describe, one_request
from harness.perf.max_rate import max_rate_search
from harness.perf.options import PerfSettings
from harness.perf.served_rate import (
    RateRun,
    failures,
    load_prompts,
    load_record,
    run_rate,
    save_json,
)
from harness.perf.timing import SEED_COLUMNS, Samples, prompts, summary
from harness.verdicts import Verdict, verdict

RATE_TAG = re.compile(r"r(inf|[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)")  # r2.0, r1e-05, rinf
MAX_RATE_TAG = "rmax"  # the max-rate search's case


def concurrency_of(case: Case) -> int | None:
    """N of the case's `c<N>` tag (None: no tag)."""
    return next((int(t[1:]) for t in case.tags if t[:1] == "c" and t[1:].isdigit()), None)


def rate_of(case: Case) -> float | None:
    """RATE of the case's `r<RATE>` tag in requests/s, inf for `rinf` (None: no tag)."""
    return next((float(m.group(1)) for t in case.tags if (m := RATE_TAG.fullmatch(t))), None)


def served_load(settings: PerfSettings) -> ServedLoad:
    return settings.served_load


def served_perf_case(case: Case, runner, tokenizer, settings: PerfSettings,
                     write=None) -> tuple[Verdict, dict]:
    """A `c<N>` case (closed loop), an `r<RATE>` case (open loop) or the `rmax` case (the
    max-rate search, its probes reported through `write(line)`): see the module."""
    if MAX_RATE_TAG in case.tags:
        return served_max_rate_case(case, runner, tokenizer, settings, write)
    rate = rate_of(case)
    if rate is None:
        return _clients_case(case, runner, tokenizer, settings)
    load, cap = served_load(settings), concurrency_of(case)
    found = load_prompts(load, tokenizer, runner, case.seqlen, case.out)
    for _ in range(settings.warmup):
        one_request(runner.client, tokenizer, found.texts[0], found.output_lens[0])
    run = run_rate(runner, tokenizer, found, rate, load, cap)
    done = [r for r in run.requests if not r.error]
    result, record = _judge(case, runner, settings, done, 1)
    flags = good(run.requests, load.goodput) if load.goodput else []
    ours = goodput_comparisons(case.id, flags, load.goodput, record["device"],
                               _stored(settings), settings.tolerance)
    result.failures[:0] = failures(run)  # requests that failed or were cut short first
    result.failures += [c.line(settings.tolerance, settings.min_ratio) for c in ours
                        if not c.passed]
    result.passed = not result.failures
    result.metrics["gated"] = result.metrics.get("gated") or any(c.gated for c in ours)
    record["comparisons"] += [asdict(c) for c in ours]
    record.update(run.metrics, **load_record(load, run, found, cap))
    record["serving_json"] = save_json(load, case.id, run, found, cap, runner, case.model)
    return result, record


def _clients_case(case: Case, runner, tokenizer, settings) -> tuple[Verdict, dict]:
    clients = concurrency_of(case)
    if clients is None:
        raise ValueError(f"{case.id}: a served perf case is tagged c<N> (clients) or r<RATE> "
                         "(requests/s), e.g. c4 or r2.0")
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
    output = sum(r.output_tokens for r in requests)
    metrics = {"concurrency": clients, "completed": len(requests), "total_output_tokens": output,
               "short_requests": sum(r.output_tokens < case.out for r in requests),
               "output_throughput": output / wall, "request_throughput": len(requests) / wall,
               "duration_s": wall}
    tpot = [r.tpot_ms for r in requests if r.tpot_ms is not None]
    for name, values in (("ttft_ms", [r.ttft_ms for r in requests]), ("tpot_ms", tpot),
                         ("itl_ms", [gap for r in requests for gap in r.itl_ms]),
                         ("e2el_ms", [r.e2el_ms for r in requests])):
        metrics.update(describe(values, name))
    result, record = _judge(case, runner, settings, requests, clients)
    cut = [r for r in requests if r.finish_reason is None]
    metrics["interrupted_requests"] = len(cut)
    if cut:  # timings of requests the server dropped are not the server's speed
        result.failures.insert(0, f"{len(cut)} of {len(requests)} requests ended with no "
                                  f"finish_reason after {min(r.output_tokens for r in cut)} to "
                                  f"{max(r.output_tokens for r in cut)} tokens of {case.out}: "
                                  "the server cut them short")
        result.passed = False
    return result, {**record, **metrics}


def _stored(settings) -> dict:
    return baselines(settings.baselines_dir, settings.baseline_names())[1]


def _judge(case: Case, runner, settings, requests: list[Request],
           batch: int) -> tuple[Verdict, dict]:
    """The seed columns and the perf gate of served requests."""
    samples = Samples(response_s=[r.e2el_ms / 1e3 for r in requests],
                      first_token_ms=[r.ttft_ms for r in requests],
                      decode_ms=[r.itl_ms for r in requests])
    seed = summary(samples, batch, case.seqlen, case.out)
    # pre/post are phases of our own loop; a server's requests do not show them
    seed.update({column: math.nan for column in SEED_COLUMNS[6:]})
    seed["batch_size"] = batch
    device = runner.describe().get("server") or runner.spec.name
    rows, ours = baselines(settings.baselines_dir, settings.baseline_names())
    result, comparisons = gate(case, samples, device, rows, ours, settings.tolerance,
                               settings.min_ratio, settings.assume_unit)
    bad = [c for c in SEED_COLUMNS[3:6] if not seed[c] >= 0]
    if bad:  # a gate fails on what it cannot measure
        result.failures.append(f"not measurable: {', '.join(bad)}")
        result.passed = False
    return result, {**seed, "device": device, **machine_load(), "samples": samples.as_dict(),
                    "comparisons": comparisons, **runner.describe()}


PROBE_FIELDS = ("request_rate", "passed", "good_request_pct", "meets_ttft_pct",
                "meets_tpot_pct", "meets_e2el_pct", "request_goodput", "request_throughput",
                "output_throughput", "completed", "failed", "interrupted_requests",
                "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms",
                "p99_itl_ms", "p99_e2el_ms", "duration_s")


def served_max_rate_case(case: Case, runner, tokenizer, settings,
                         write=None) -> tuple[Verdict, dict]:
    """The highest request rate at which at least `max_rate_percent`% of requests meet every
    goodput target; each probe is reported through `write(line)` as it ends."""
    load, cap = served_load(settings), concurrency_of(case)
    percent = load.max_rate_percent
    rule = f">= {percent:g}% of requests meet every goodput target"
    if load.goodput is None or not load.goodput.targets():
        return verdict(["the max-rate search needs goodput targets: --goodput ttft:MS "
                        "tpot:MS e2el:MS (any subset)"], percent, rule), {}
    found = load_prompts(load, tokenizer, runner, case.seqlen, case.out)
    for _ in range(settings.warmup):
        one_request(runner.client, tokenizer, found.texts[0], found.output_lens[0])

    def passes(run: RateRun) -> bool:
        return (not failures(run) and run.metrics["good_request_pct"] >= percent)

    def report(rate: float, run: RateRun) -> None:
        if write is not None:
            m = run.metrics
            write(f"{case.id} max-rate probe {rate:.4g} req/s: "
                  f"{'met' if passes(run) else 'missed'} ({m['good_request_pct']:.1f}% of "
                  f"{m['num_requests']} met {load.goodput}; p99 TTFT {m['p99_ttft_ms']:.4g} "
                  f"ms, p99 TPOT {m['p99_tpot_ms']:.4g} ms)")

    start = next((r for r in load.request_rates if math.isfinite(r) and r > 0), 1.0)
    search = max_rate_search(lambda rate: run_rate(runner, tokenizer, found, rate, load, cap),
                             passes, start=start, report=report)
    probes = [{**{k: p.outcome.metrics.get(k) for k in PROBE_FIELDS}, "request_rate": p.rate,
               "passed": p.passed} for p in search.probes]
    reason, unbounded = search.reason, search.rate is not None and search.bracket[1] is None
    if unbounded:  # N requests never put more than N in flight, whatever the rate
        reason += (f"; {load.num_requests} requests are at most {load.num_requests} in flight: "
                   "more --num-requests load the server for longer")
    record = {"max_rate": search.rate, "max_rate_percent": percent,
              "max_rate_lower_bound": unbounded,
              "max_rate_bracket": list(search.bracket), "max_rate_search": reason,
              "probes": probes, "device": runner.describe().get("server") or runner.spec.name,
              **machine_load(), **runner.describe()}
    if search.outcome is not None:
        best: RateRun = search.outcome
        record.update(best.metrics, **load_record(load, best, found, cap))
        record["serving_json"] = save_json(load, case.id, best, found, cap, runner, case.model)
    record.update(goodput_targets=str(load.goodput), max_concurrency=cap,
                  num_requests=load.num_requests)
    problems = [] if search.rate is not None else [
        f"no request rate met the goodput targets ({load.goodput}) for {percent:g}% of "
        f"requests: {search.reason}"]
    return verdict(problems, percent, rule), record

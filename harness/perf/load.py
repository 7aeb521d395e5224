"""Load on a served port: when requests arrive, how many are in flight, and what each measured.

Arrivals follow vLLM's serving benchmark (`vllm bench serve`, vllm/benchmarks/serve.py):
at request rate R (requests/s) with burstiness B the gaps between arrivals are gamma
distributed with shape B and scale 1 / (R * B), so their mean is 1 / R whatever B (B = 1:
a Poisson process; B < 1: burstier; B > 1: more even; B = inf: every gap exactly 1 / R).
R = inf sends every request at once. The first request arrives at 0 s; the draws come from
a numpy Generator seeded with the run's seed, so a rerun sends the same schedule.

`run_load` sends request i at its arrival time (never before) on a thread of its own, with
at most `max_concurrency` in flight: a request whose time has come waits for a slot, first
come first served, as vLLM's semaphore makes it wait. Its timings start when it is sent,
so the wait for a slot is not in its TTFT (as in vLLM; `queue_s` keeps the wait).

Per request, timed on this side of the connection as vLLM times it:
  ttft_ms   time to first token: from sending the request to its first streamed chunk
  itl_ms    inter-token latencies: the gaps between consecutive chunks
  e2el_ms   end-to-end latency of the request
  tpot_ms   time per output token after the first: (e2el - ttft) / (output tokens - 1)
The request is the unit of every statistic: a request's token gaps share its server state
and are not independent samples.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from harness.perf.goodput import Goodput

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class ServedLoad:
    """The settings of the open-loop (request-rate) served perf cases and the max-rate
    search; the fields the perf options fill."""

    request_rates: tuple[float, ...] = ()  # requests/s, inf: all at once
    burstiness: float = 1.0  # gamma shape of the arrival gaps; 1: Poisson
    num_requests: int = 16  # requests per rate case (and per max-rate probe)
    seed: int = 0  # arrivals, prompt draws and output lengths
    goodput: Goodput | None = None  # latency targets of request goodput
    prompts: str = "fixed"  # fixed|mmlu|ceval|humaneval|random (harness/perf/prompt_sets.py)
    output_lengths: str = "fixed"  # fixed|uniform[:RATIO]
    max_rate: bool = False  # search the highest rate meeting the targets
    max_rate_percent: float = 90.0  # share of requests that must meet every target
    serving_json_dir: Path | None = None  # one vLLM-format result JSON per case
    ceval_dir: Path | None = None  # C-Eval in its official layout, for --prompts ceval


@dataclass
class Request:
    ttft_ms: float
    itl_ms: list[float]
    e2el_ms: float
    output_tokens: int
    finish_reason: str | None  # None: the server ended the stream without saying why
    text: str = ""  # the generated text
    error: str = ""  # why the request failed ("" when it was served)
    start_s: float = math.nan  # when it was sent, seconds from the start of the load
    queue_s: float = 0.0  # how long it waited for a slot after it arrived

    @property
    def tpot_ms(self) -> float | None:
        """Time per output token after the first; None with fewer than two tokens."""
        if self.output_tokens < 2:
            return None
        return (self.e2el_ms - self.ttft_ms) / (self.output_tokens - 1)


def one_request(client, tokenizer, text: str, out: int) -> Request:
    """One streaming request of `out` new tokens, timed; output tokens are the tokenizer's
    count of the streamed text (as vLLM counts them)."""
    start = time.perf_counter()
    arrivals, pieces, finish = [], [], None
    for arrived, piece, reason in client.stream(text, out):
        arrivals.append(arrived)
        pieces.append(piece)
        finish = reason or finish
    if not arrivals:
        arrivals = [time.perf_counter()]
    generated = "".join(pieces)
    tokens = len(tokenizer(generated, add_special_tokens=False).input_ids)
    return Request((arrivals[0] - start) * 1e3, list(np.diff(arrivals) * 1e3),
                   (arrivals[-1] - start) * 1e3, tokens, finish, generated)


def describe(values: list[float], name: str) -> dict:
    """mean, median, p90, p99 of `values` under `name` (NaN when there are none)."""
    if not values:
        return {f"mean_{name}": math.nan, f"median_{name}": math.nan,
                **{f"p{p}_{name}": math.nan for p in PERCENTILES if p != 50}}
    found = {f"mean_{name}": float(np.mean(values)), f"median_{name}": float(np.median(values))}
    found.update({f"p{p}_{name}": float(np.percentile(values, p)) for p in PERCENTILES
                  if p != 50})
    return found


def latency_metrics(requests: list[Request]) -> dict:
    """mean/median/p90/p99 of TTFT, TPOT, E2EL over requests and of ITL over every gap, in
    ms (vLLM's names: `p99_ttft_ms`, ...)."""
    tpot = [r.tpot_ms for r in requests if r.tpot_ms is not None]
    found = {}
    for name, values in (("ttft_ms", [r.ttft_ms for r in requests]), ("tpot_ms", tpot),
                         ("itl_ms", [gap for r in requests for gap in r.itl_ms]),
                         ("e2el_ms", [r.e2el_ms for r in requests])):
        found.update(describe(values, name))
    return found


def arrival_offsets(n: int, rate: float, burstiness: float = 1.0,
                    seed: int = 0) -> list[float]:
    """Seconds from the start at which each of `n` requests arrives (see the module)."""
    if not rate > 0:
        raise ValueError(f"request rate {rate}: expected requests/s > 0, or inf")
    if not burstiness > 0:
        raise ValueError(f"burstiness {burstiness}: expected a gamma shape > 0, or inf")
    if n <= 0:
        return []
    if math.isinf(rate):
        return [0.0] * n
    if math.isinf(burstiness):
        gaps = np.full(n - 1, 1.0 / rate)
    else:
        rng = np.random.default_rng(seed)
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n - 1)
    return [0.0, *np.cumsum(gaps).tolist()]


def _sleep_until(deadline: float) -> None:
    while (left := deadline - time.perf_counter()) > 0:
        time.sleep(left)


@dataclass
class _Flight:
    """What the sending threads share: results by index and the first failure."""

    results: list = field(default_factory=list)
    failure: BaseException | None = None


def run_load(send: Callable[[object], Request], items: Sequence, offsets: Sequence[float],
             max_concurrency: int | None = None) -> tuple[list[Request], float]:
    """Send items[i] at offsets[i] seconds from now (never earlier), at most
    `max_concurrency` in flight (None: no cap); each request's `start_s` and `queue_s` are
    set. Returns the requests in item order and the duration in seconds, from the start to
    the end of the last request. An exception in `send` is raised once all have ended."""
    if len(items) != len(offsets):
        raise ValueError(f"{len(items)} items but {len(offsets)} arrival offsets")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max concurrency {max_concurrency}: expected >= 1, or None")
    slots = threading.BoundedSemaphore(max_concurrency) if max_concurrency else None
    flight = _Flight([None] * len(items))
    start = time.perf_counter()

    def work(i: int, sent: float) -> None:
        try:
            request = send(items[i])
            flight.results[i] = replace(request, start_s=sent - start,
                                        queue_s=max(0.0, sent - start - offsets[i]))
        except Exception as e:  # handed to the caller once every request has ended
            flight.failure = flight.failure or e
        finally:
            if slots is not None:
                slots.release()

    threads = []
    for i, offset in enumerate(offsets):
        _sleep_until(start + offset)
        if slots is not None:
            slots.acquire()  # the request has arrived: it waits for a slot
        thread = threading.Thread(target=work, args=(i, time.perf_counter()), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    duration = time.perf_counter() - start
    if flight.failure is not None:
        raise flight.failure
    return flight.results, duration


def length_histogram(values: Sequence[int], bins: int = 10) -> dict:
    """numpy's histogram of token lengths: `counts` per bin and the bins' `edges`."""
    if not len(values):
        return {"counts": [], "edges": []}
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins)
    return {"counts": counts.tolist(), "edges": edges.tolist()}

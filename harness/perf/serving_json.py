"""A served perf case as vLLM's serving-benchmark result JSON, so the tools that read those
files (dashboards, comparison scripts) read ours.

The fields and units are those `vllm bench serve --save-result --save-detailed` writes
(vllm/benchmarks/serve.py: `main_async`'s result_json merged with `benchmark`'s result):
durations, ttfts, itls, latencies, start_times and queue_times in seconds; every
`mean_/median_/std_/pNN_<metric>_ms` statistic in milliseconds; throughputs per second.
Statistics are over the completed requests (ITL over every gap of them, TPOT over those of
two or more tokens), as vLLM computes them; per-request lists cover every request sent (a
failed one with output length 0 and its error). The percentiles are those vLLM writes with
`--percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 90,99`. The goodput targets
go in a `goodput` key, as vLLM's `--metadata goodput=...` would add them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from harness.perf.goodput import Goodput, good

PERCENTILES = (90, 99)
STAT_METRICS = ("ttft", "tpot", "itl", "e2el")


def _stats(name: str, seconds: list[float]) -> dict:
    """vLLM's statistics of one metric, in ms (0 when there are no values, as vLLM)."""
    values = np.asarray(seconds or [0.0], dtype=float) * 1e3
    found = {f"mean_{name}_ms": float(values.mean()), f"median_{name}_ms":
             float(np.median(values)), f"std_{name}_ms": float(values.std())}
    found.update({f"p{p}_{name}_ms": float(np.percentile(values, p)) for p in PERCENTILES})
    return found


def peak_concurrency(requests) -> int:
    """Most requests in flight at once (half-open [start, end) intervals, as vLLM)."""
    events = sorted([(r.start_s, 1) for r in requests] +
                    [(r.start_s + r.e2el_ms / 1e3, -1) for r in requests])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def peak_output_tokens_per_s(requests) -> float:
    """The most output chunks that arrived within one second (vLLM's one-second buckets)."""
    times = [t for r in requests for t in np.cumsum([r.start_s + r.ttft_ms / 1e3,
                                                     *np.asarray(r.itl_ms) / 1e3])]
    if not times:
        return 0.0
    first = min(r.start_s for r in requests)
    buckets = np.bincount(np.floor(np.asarray(times) - first).astype(int).clip(0))
    return float(buckets.max())


def serving_json(requests, input_lens: list[int], duration_s: float, *, request_rate: float,
                 burstiness: float, max_concurrency: int | None, model_id: str,
                 tokenizer_id: str, goodput: Goodput | None, backend: str = "openai",
                 label: str | None = None, date: str | None = None) -> dict:
    """vLLM's result JSON of one load: `requests` (load.Request, in the order sent) with
    the prompts' token lengths."""
    done = [r for r in requests if not r.error]
    output_lens = [0 if r.error else r.output_tokens for r in requests]
    total_in = sum(n for n, r in zip(input_lens, requests) if not r.error)
    total_out = sum(output_lens)
    targets = goodput.targets() if goodput is not None else {}
    result = {
        "date": date or time.strftime("%Y%m%d-%H%M%S"), "endpoint_type": backend,
        "backend": backend, "label": label, "model_id": model_id,
        "tokenizer_id": tokenizer_id, "num_prompts": len(requests),
        "request_rate": request_rate if math.isfinite(request_rate) else "inf",
        "burstiness": burstiness, "max_concurrency": max_concurrency,
        "goodput": str(goodput) if targets else None,
        "duration": duration_s, "completed": len(done), "failed": len(requests) - len(done),
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(done) / duration_s,
        "request_goodput": sum(good(done, goodput)) / duration_s if targets else None,
        "output_throughput": total_out / duration_s,
        "total_token_throughput": (total_in + total_out) / duration_s,
        "input_lens": list(input_lens), "output_lens": output_lens,
        "ttfts": [r.ttft_ms / 1e3 for r in requests],
        "itls": [[gap / 1e3 for gap in r.itl_ms] for r in requests],
        "latencies": [r.e2el_ms / 1e3 for r in requests],
        "start_times": [r.start_s for r in requests],
        "queue_times": [r.queue_s for r in requests],
        "generated_texts": [r.text for r in requests],
        "errors": [r.error for r in requests],
        "max_output_tokens_per_s": peak_output_tokens_per_s(done),
        "max_concurrent_requests": peak_concurrency(done),
    }
    seconds = {"ttft": [r.ttft_ms / 1e3 for r in done],
               "tpot": [r.tpot_ms / 1e3 for r in done if r.tpot_ms is not None],
               "itl": [gap / 1e3 for r in done for gap in r.itl_ms],
               "e2el": [r.e2el_ms / 1e3 for r in done]}
    for name in STAT_METRICS:
        result.update(_stats(name, seconds[name]))
    return result


def write_serving_json(directory: Path, case_id: str, result: dict) -> Path:
    """`directory/<case id>.json` (the directory is made where missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{case_id}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return path

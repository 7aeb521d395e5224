"""One perf case end to end: measure, count bytes, compare with transformers and baselines.

The suite calls `perf_case` or `max_batch_case` and records what they return; everything
here is testable with dummy runners.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch

from harness.baselines import ours_baselines, perf_tables
from harness.cases import Case
from harness.devices import Backend
from harness.perf.gate import gate
from harness.perf.memory import (
    cpu_search_in_child,
    free,
    kv_bytes_read_per_step,
    out_of_memory,
    run_search,
)
from harness.perf.options import PerfSettings
from harness.perf.timing import SEED_COLUMNS, measure, summary
from harness.runners import Runner
from harness.verdicts import Verdict, verdict

PHASES = {"first_token": "forward_first_token_time(ms)",
          "next_token": "forward_next_token_time(ms)", "pre": "pre_next_token_time(ms)",
          "post": "post_next_token_time_post(ms)", "response": "ResponseTime(s)"}


_BANDWIDTH: dict[str, float] = {}


def bandwidth(backend: Backend) -> float:
    """Copy bandwidth in bytes/s, measured once per process per device (keyed by the
    device's name: each case gets a backend object of its own)."""
    if backend.name not in _BANDWIDTH:
        _BANDWIDTH[backend.name] = backend.copy_bandwidth()
    return _BANDWIDTH[backend.name]


@cache
def baselines(root: Path, selected: tuple[str, ...] | None):
    """(table rows, saved runs of ours) under `root`, limited to the names of --perf-baseline
    (None: all; the names were checked at start-up, `PerfSettings.from_config`)."""
    rows, ours = perf_tables(root), ours_baselines(root)
    if selected is not None:
        rows = [r for r in rows if r.name in selected]
        ours = {n: b for n, b in ours.items() if n in selected}
    return rows, ours


def byte_counts(runner: Runner, case: Case, next_ms: float, rate: float) -> dict:
    """Weight and KV bytes a decode step reads, and how close the step comes to the floor.

    Weights are counted as stored (int8 plus scales for w8a16/w8a8), the KV cache in the
    activation dtype. Ranks of a tensor-parallel run on the CPU share one memory bus: the
    step reads every rank's slice (this process's times the ranks; their slices are equal)."""
    ranks = runner.world_size if case.hardware == "cpu" else 1
    weights = runner.streamed_weight_bytes() * ranks
    element = torch.empty((), dtype=runner.precision.dtype).element_size()
    kv = kv_bytes_read_per_step(runner.config, element, case.batch, case.seqlen, case.out)
    floor_ms = (weights + kv) / rate * 1e3
    return {"weight_bytes": runner.weight_bytes() * ranks, "streamed_weight_bytes": weights,
            "kv_bytes_per_step": kv,
            "achieved_gb_per_s": (weights + kv) / next_ms / 1e6 if next_ms else float("nan"),
            "copy_bandwidth_gb_per_s": rate / 1e9, "floor_ms": floor_ms,
            "pct_of_floor": 100 * floor_ms / next_ms if next_ms else float("nan")}


def perf_case(case: Case, runner: Runner, tokenizer, backend: Backend, settings: PerfSettings,
              reference: Runner | None = None) -> tuple[Verdict, dict]:
    """Measure a case; its verdict against the matching baselines and its metrics."""
    backend.reset_peak_memory()
    samples, error = out_of_memory(lambda: measure(runner, tokenizer, backend, case.batch,
                                                   case.seqlen, case.out, settings.repeats,
                                                   settings.warmup))
    if error:  # fails this case, not the grid
        free(runner, backend)
        reason = f"out of memory at batch {case.batch}: {error[:160]}"
        return verdict([reason], float("nan"), "completes"), {}
    metrics = summary(samples, case.batch, case.seqlen, case.out)
    metrics["peak_memory_bytes"] = backend.peak_memory_bytes()
    metrics.update(byte_counts(runner, case, metrics["forward_next_token_time(ms)"],
                               bandwidth(backend)))
    metrics.update(device=backend.device_name(), **machine_load())
    if reference is not None:
        theirs = summary(measure(reference, tokenizer, backend, case.batch, case.seqlen, case.out,
                                 settings.repeats, settings.warmup),
                         case.batch, case.seqlen, case.out)
        for phase, column in PHASES.items():
            metrics[f"reference_{column}"] = theirs[column]
            metrics[f"ratio_{phase}"] = metrics[column] / theirs[column]
    rows, ours = baselines(settings.baselines_dir, settings.baseline_names())
    result, comparisons = gate(case, samples, metrics["device"], rows, ours, settings.tolerance,
                               settings.min_ratio, settings.assume_unit)
    bad = [c for c in SEED_COLUMNS[3:] if not metrics[c] >= 0]
    if bad:  # a gate fails on what it cannot measure
        result.failures.append(f"not measurable: {', '.join(bad)}")
        result.passed = False
    metrics.update(samples=samples.as_dict(), comparisons=comparisons)
    metrics.update({f"ratio_{c['metric']}_{c['baseline']}": c["slowdown"] for c in comparisons})
    return result, metrics


def machine_load() -> dict:
    """The machine's load when a case was measured: timings on a busy machine read slower."""
    return {"load_1m": os.getloadavg()[0], "cpu_count": os.cpu_count()}


def terminal_lines(config):
    """write(line): a line on the terminal now, past pytest's output capture (a max-batch
    search probes for minutes)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")

    def write(line: str) -> None:
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(line)
    return write


def max_batch_case(case: Case, checkpoint, backend: Backend, settings: PerfSettings,
                   write=None) -> tuple[Verdict, dict]:
    """The largest batch for (in, out) under the memory limit (and latency bound); each
    probe is reported through `write(line)` as it ends."""
    args = dict(dtype=case.dtype, in_len=case.seqlen, out_len=case.out,
                memory=settings.memory_limit, cap=settings.max_batch_cap,
                max_next_ms=settings.max_next_token_ms, repeats=settings.repeats,
                warmup=settings.warmup,
                progress=None if write is None else
                lambda probe: write(f"{case.id} max-batch probe {probe.line()}"))
    if backend.name == "cpu":
        result = cpu_search_in_child(checkpoint, **args)
    else:
        try:
            result = run_search(checkpoint, backend, **args,
                                enforce=lambda memory, _weights: backend.limit_memory(memory))
        finally:
            backend.limit_memory(None)
    found = result["search"]
    metrics = {"max_batch": found["found"], "predicted_batch": found["predicted"],
               "bound_by": found["bound_by"], "memory_limit_bytes": result["memory_bytes"],
               "weight_bytes": result["weight_bytes"], "probes": found["probes"],
               **machine_load(), **result["summary"]}
    failures = [] if found["found"] else [f"no batch fits: {found['probes'][-1]['error']}"]
    return verdict(failures, float(found["found"]), f"largest batch that fits ({found['bound_by']})"
                   ), metrics

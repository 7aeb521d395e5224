"""Memory model, byte counts for the bandwidth floor, and the max-batch search.

The search predicts the largest batch from an analytic model, then probes around it on the
device (prefill + two decode steps at that batch), catching out-of-memory cleanly: the cache
is released and the next probe runs. The memory available is enforced, not assumed:
  - cuda/npu: `set_per_process_memory_fraction`, so the allocator itself refuses;
  - cpu: the search runs in a child process whose address space is capped with RLIMIT_AS, so
    an allocation beyond the limit fails inside torch (a catchable error) instead of waking
    the kernel's OOM killer. The cap is set after the model, the tokenizer and one small
    probe have run (so that threads and libraries outside torch, which cannot survive a
    failed allocation, have what they need) at the size then plus the limit minus the
    weights. A child also keeps the parent's results intact if anything goes wrong.
"""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch

from models.config import ModelConfig

# Interpreter, allocator and library state that the model does not account for.
FIXED_OVERHEAD_BYTES = 64 * 2**20
PROBE_LINE = "probe "  # the search child's progress lines on its stdout


def kv_bytes_per_token(cfg: ModelConfig, element_size: int) -> int:
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * element_size


def kv_bytes_read_per_step(cfg: ModelConfig, element_size: int, batch: int, in_len: int,
                           out_len: int) -> float:
    """Cache bytes a decode step reads, on average over the `out_len - 1` steps."""
    mean_context = in_len + out_len / 2
    return batch * mean_context * kv_bytes_per_token(cfg, element_size)


def workspace_bytes(cfg: ModelConfig, batch: int, in_len: int, element_size: int) -> int:
    """Largest transient activations of a prefill: a layer's hidden states, fused projections
    and MLP, attention scores (when the kernel materialises them) and the last logits."""
    tokens = batch * in_len
    per_token = (4 * cfg.hidden_size + (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
                 + 2 * cfg.intermediate_size)
    scores = batch * cfg.num_heads * in_len * in_len * 4
    return tokens * per_token * element_size + scores + batch * cfg.vocab_size * 4


def predict_max_batch(cfg: ModelConfig, weights: int, element_size: int, in_len: int,
                      out_len: int, memory: int) -> int:
    per_row = ((in_len + out_len) * kv_bytes_per_token(cfg, element_size)
               + workspace_bytes(cfg, 1, in_len, element_size))
    return max(0, (memory - weights - FIXED_OVERHEAD_BYTES) // per_row)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text
                                                or "out of memory" in text)


def out_of_memory(request):
    """(request(), "") or, where it ran out of memory, (None, the error's first line); any
    other error re-raises. Call `free` after a failure before the next request."""
    try:
        return request(), ""
    except Exception as e:  # noqa: BLE001 - only out-of-memory is an answer; the rest re-raise
        if not is_out_of_memory(e):
            raise
        return None, str(e).splitlines()[0]


def free(runner, backend) -> None:
    """Give back what a request held: the KV cache, the activations that a failed request's
    traceback keeps in a reference cycle, the device allocator's cached blocks."""
    runner.release()
    gc.collect()
    if backend.name != "cpu":
        backend.module().empty_cache()


@dataclass
class Probe:
    batch: int
    fits: bool
    next_token_ms: float | None
    error: str = ""
    peak_memory_bytes: int | None = None  # the backend's peak during the probe

    def line(self) -> str:
        """One line of progress: the batch, its outcome and the memory it took."""
        outcome = (f"fits, next token {self.next_token_ms:.3g} ms" if self.fits and
                   self.next_token_ms is not None else "fits" if self.fits
                   else f"does not fit ({self.error})")
        memory = (f", peak memory {self.peak_memory_bytes / 2**20:.0f} MiB"
                  if self.peak_memory_bytes else "")
        return f"batch {self.batch}: {outcome}{memory}"


@dataclass
class Search:
    predicted: int
    found: int
    bound_by: str  # "memory", "latency", "cap" or "nothing fits"
    probes: list[Probe] = field(default_factory=list)


def probe(runner, tokenizer, backend, texts: list[str], batch: int, in_len: int,
          out_len: int) -> Probe:
    """One full request of `batch` prompts (cycling `texts`); out of memory -> fits=False."""
    from harness.perf.timing import Samples, run_request

    samples = Samples()
    backend.reset_peak_memory()
    rows = [texts[row % len(texts)] for row in range(batch)]
    try:
        _, error = out_of_memory(lambda: run_request(runner, tokenizer, backend, rows, in_len,
                                                     out_len, samples))
    finally:
        free(runner, backend)
    if error:
        return Probe(batch, False, None, error[:200], backend.peak_memory_bytes())
    steps = samples.decode_ms[0]
    return Probe(batch, True, sum(steps) / len(steps) if steps else None,
                 peak_memory_bytes=backend.peak_memory_bytes())


def search(check, predicted: int, cap: int, max_next_ms: float | None,
           progress=None) -> Search:
    """Largest batch in 1..cap for which check(batch) -> Probe fits (and is fast enough),
    starting at the prediction, doubling or halving to bracket it, then bisecting.
    `progress(probe)` is called after each probe (each can take minutes)."""
    result = Search(predicted, 0, "nothing fits")
    seen: dict[int, Probe] = {}

    def ok(batch: int) -> bool:
        if batch not in seen:
            seen[batch] = check(batch)
            result.probes.append(seen[batch])
            if progress is not None:
                progress(seen[batch])
        p = seen[batch]
        return p.fits and (max_next_ms is None or (p.next_token_ms or 0) <= max_next_ms)

    lo, hi = 0, cap + 1  # lo passes (0: none known), hi fails (cap + 1: beyond the cap)
    batch = min(max(predicted, 1), cap)
    while hi - lo > 1:
        if ok(batch):
            lo = batch
            batch = min(batch * 2, cap) if hi > cap else (lo + hi) // 2
            if batch == lo:
                break
        else:
            hi = batch
            batch = batch // 2 if lo == 0 else (lo + hi) // 2
            if batch == 0:
                break
    result.found = lo
    if lo == 0:
        pass  # "nothing fits"
    elif lo == cap:
        result.bound_by = "cap"
    elif lo + 1 in seen and lo + 1 <= cap:
        result.bound_by = "memory" if not seen[lo + 1].fits else "latency"
    elif hi in seen:
        result.bound_by = "memory" if not seen[hi].fits else "latency"
    return result


def run_search(checkpoint, backend, dtype: str, in_len: int, out_len: int, memory: int | None,
               cap: int, max_next_ms: float | None, repeats: int, warmup: int,
               enforce=None, progress=None) -> dict:
    """Search, then measure the found batch, in this process. `enforce(memory, weights)` is
    called once everything but the probes is loaded and warm, to make the limit real;
    `progress(probe)` after each probe."""
    from transformers import AutoTokenizer

    from harness.perf.timing import measure, prompts, summary
    from harness.ports.engine import PortedRunner
    from models.precision import Precision

    # On F.linear: oneDNN does not survive an allocation refused under the CPU's address-space
    # cap (the process dies), and the search must see every refusal as an error.
    runner = PortedRunner(checkpoint, Precision.of(dtype, backend.name), hardware=backend,
                          headroom=out_len, device_logits=True, cpu_dense=False)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    weights = runner.weight_bytes()
    element = torch.empty((), dtype=runner.precision.dtype).element_size()
    available = memory if memory is not None else backend.free_memory_bytes() + weights
    predicted = predict_max_batch(runner.config, weights, element, in_len, out_len, available)
    texts = prompts(tokenizer, 16, in_len)
    # Warm before the limit: the tokenizer's thread pool and the kernels' first allocations.
    probe(runner, tokenizer, backend, texts, 4, in_len, min(out_len, 2))
    if enforce is not None:
        enforce(available, weights)
    found = search(lambda b: probe(runner, tokenizer, backend, texts, b, in_len, out_len),
                   predicted, cap, max_next_ms, progress)
    measured = {}
    while found.found and not measured:
        samples, error = out_of_memory(lambda: measure(runner, tokenizer, backend, found.found,
                                                       in_len, out_len, repeats, warmup))
        if not error:
            measured = summary(samples, found.found, in_len, out_len)
        else:  # at the edge, memory may have moved a little
            free(runner, backend)
            found.probes.append(Probe(found.found, False, None, "repeat: out of memory"))
            if progress is not None:
                progress(found.probes[-1])
            found.found, found.bound_by = found.found - 1, "memory"
    return {"search": asdict(found), "summary": measured, "weight_bytes": weights,
            "memory_bytes": available}


def cpu_search_in_child(checkpoint, dtype: str, in_len: int, out_len: int, memory: int | None,
                        cap: int, max_next_ms: float | None, repeats: int, warmup: int,
                        progress=None) -> dict:
    """`run_search` on the CPU in a child process whose address space is capped; the child
    reports each probe on a `probe` line as it goes, then the result on the last line."""
    args = dict(checkpoint=str(checkpoint), dtype=dtype, in_len=in_len, out_len=out_len,
                memory=memory, cap=cap, max_next_ms=max_next_ms, repeats=repeats, warmup=warmup)
    # Fewer malloc arenas reserve less address space unused; a fixed mmap threshold returns
    # every large block to the system when freed, so probes do not fragment the capped space.
    env = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    started = time.perf_counter()
    lines = []
    with tempfile.TemporaryFile("w+") as errors:  # a file: a full stderr pipe would block
        with subprocess.Popen([sys.executable, "-m", "harness.perf.memory", json.dumps(args)],
                              stdout=subprocess.PIPE, stderr=errors, text=True,
                              env={**_environ(), **env}) as child:
            for line in child.stdout:
                if line.startswith(PROBE_LINE) and progress is not None:
                    progress(Probe(**json.loads(line.removeprefix(PROBE_LINE))))
                lines.append(line)
        if child.returncode != 0:
            errors.seek(0)
            tail = (errors.read().strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"max-batch search process exited with {child.returncode}: "
                               f"{tail}")
    result = json.loads(lines[-1])
    result["search_s"] = time.perf_counter() - started
    return result


def _environ() -> dict:
    import os

    return dict(os.environ)


def _cap_address_space(memory: int, weights: int) -> None:
    import resource

    size = _address_space_bytes()
    resource.setrlimit(resource.RLIMIT_AS, (size + max(memory - weights, 0),
                                            resource.RLIM_INFINITY))


def _child(args: dict) -> None:
    from harness.devices import get_backend

    def progress(probe: Probe) -> None:
        print(PROBE_LINE + json.dumps(asdict(probe)), flush=True)

    result = run_search(args.pop("checkpoint"), get_backend("cpu"), enforce=_cap_address_space,
                        progress=progress, **args)
    print(json.dumps(result, default=lambda v: None if isinstance(v, float) and math.isnan(v)
                     else str(v)))


def _address_space_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmSize: cannot cap the address space")


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))

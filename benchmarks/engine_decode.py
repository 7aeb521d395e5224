"""Decode speed of the ported engine in fp32, bf16, W8A16 and W8A8 beside transformers `generate`
and llama.cpp's server on the same model, each against its bandwidth floor, in one process.

Default: smollm2-135m, CPU, batch 1, 128-token prompt, 64 new tokens. Per-token decode time is
(time to generate N tokens - time to generate 1 token) / (N - 1), so prefill cancels out;
prefill speed is prompt tokens / time to the first new token. Each figure is the best of
--repeats runs. The floor of an engine is the time to stream the bytes one decode step reads
(its weights as it stores them; embedding rows it only gathers excepted) once at the measured
copy bandwidth. "ours fp32 F.linear" is the compiled fp32 engine with its dense layers left on
`F.linear` (MKL) instead of the CPU kernels of `CpuDenseMethod`, to show what those give.
llama.cpp runs as the `llama-cpp` port's server (llama-cpp-python, started here,
`--logits_all false`) on the shipped Q4_1 GGUF and on F16 and F32 files its own quantizer
writes from it; it is timed through HTTP from this process, which stays idle.

    .venv/bin/python benchmarks/engine_decode.py [--llama q4_1,f16,f32 | --llama none]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from harness.checkpoints import embedded_checkpoint
from harness.devices import cpu_description, describe_cpu, get_backend
from harness.ports.engine import PortedRunner
from harness.reference_runner import ReferenceRunner
from models.precision import Precision

LLAMA_TYPES = ("q4_1", "f16", "f32")


def measure(run, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(best decode ms per token, best seconds to the first token) of `run(n)`, which
    generates n tokens."""
    run(2)  # warm up (and compile, where the engine compiles)
    best, first = float("inf"), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(1)
        one = time.perf_counter() - start
        start = time.perf_counter()
        run(new_tokens)
        many = time.perf_counter() - start
        best = min(best, (many - one) / (new_tokens - 1) * 1e3)
        first = min(first, one)
    return best, first


def per_token_ms(run, new_tokens: int, repeats: int) -> float:
    """Best-of-repeats decode time per token of `run(n)`."""
    return measure(run, new_tokens, repeats)[0]


def transformers_ms(path, ids, mask, new_tokens: int, repeats: int) -> float:
    """`transformers` fp32 `generate`, per new token, measured as `per_token_ms` does."""
    return transformers_figures(path, ids, mask, new_tokens, repeats)[0]


def transformers_figures(path, ids, mask, new_tokens: int, repeats: int):
    """(decode ms/token, seconds to the first token, bytes a decode step streams)."""
    reference = ReferenceRunner(path)
    ms, first = measure(lambda n: reference.generate(ids, mask, n), new_tokens, repeats)
    return ms, first, reference.streamed_weight_bytes()


def gguf_bytes(path: Path) -> int:
    """Bytes of the tensors a GGUF file holds (SmolLM2's LM head is its embedding table, so a
    decode step streams all of them)."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(path).tensors)


def convert_gguf(source: Path, kind: str, directory: Path) -> Path:
    """`source` re-encoded as `kind` (f16 or f32) by llama.cpp's own quantizer; its per-tensor
    log goes to a file beside the output."""
    import llama_cpp

    target = directory / f"{source.stem}-{kind}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
                    "f32": llama_cpp.LLAMA_FTYPE_ALL_F32}[kind]
    params.allow_requantize = True
    log = target.with_suffix(".log")
    with open(log, "w") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)  # the C library writes to stderr itself
        try:
            failed = llama_cpp.llama_model_quantize(str(source).encode(),
                                                    str(target).encode(), params)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    if failed:
        raise RuntimeError(f"llama.cpp could not write {target} from {source} (log: {log})")
    return target


def llama_figures(gguf: Path, prompt: str, new_tokens: int, repeats: int, threads: int,
                  log: Path) -> tuple[float, float, int]:
    """(decode ms/token, seconds to the first token, prompt tokens) of llama.cpp's server.
    Decode repeats one prompt (the server reuses its evaluated prefix, so both requests of a
    pair skip the prompt alike) and divides by the tokens its usage counts; the first-token
    times, taken after all pairs, each take a prompt it has not seen (between the requests of
    a pair, such a prompt would evict the cached one and charge one request of the pair with
    the prompt's evaluation)."""
    from harness.ports.llama_server import LlamaServer
    from harness.ports.openai import EndpointError, OpenAIClient

    with LlamaServer(gguf, log, threads=threads, logits_all=False) as server:
        client = OpenAIClient(server.url, server.alias, timeout=600)

        def run(n: int, text: str = prompt) -> tuple[float, int, int]:
            """(seconds, tokens generated, prompt tokens) of one request for n tokens."""
            start = time.perf_counter()
            data = client.completion({"prompt": text, "max_tokens": n, "min_tokens": n,
                                      "temperature": 0})
            seconds = time.perf_counter() - start
            usage = data.get("usage") or {}
            if not usage.get("completion_tokens", 0) >= n:
                raise EndpointError(f"{server.url}: asked for {n} tokens, usage says {usage}")
            return seconds, usage["completion_tokens"], usage["prompt_tokens"]

        run(2)
        ms = float("inf")
        for _ in range(repeats):  # both requests of each pair find the prompt in the cache
            one, one_tokens, _ = run(1)
            many, many_tokens, _ = run(new_tokens)  # its usage may count one more
            ms = min(ms, (many - one) / (many_tokens - one_tokens) * 1e3)
        first = float("inf")
        for attempt in range(repeats):  # each a prompt the server has not seen
            seconds, _, prompt_tokens = run(1, f"{attempt}. {prompt}")
            first = min(first, seconds)
    return ms, first, prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--llama", default=",".join(LLAMA_TYPES),
                        help="llama.cpp weight types to time (q4_1, f16, f32), or none")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    kinds = [] if args.llama == "none" else args.llama.split(",")
    if unknown := sorted(set(kinds) - set(LLAMA_TYPES)):
        parser.error(f"--llama: unknown type(s) {', '.join(unknown)}; valid: "
                     f"{', '.join(LLAMA_TYPES)} or none")
    if kinds and args.model != "smollm2-135m":
        parser.error("--llama: a GGUF ships for smollm2-135m only; pass --llama none")
    if kinds:
        from harness.ports.llama_server import availability

        usable, why = availability()
        if not usable:
            parser.error(f"--llama: {why}; or pass --llama none")

    path = embedded_checkpoint(args.model)
    cpu = get_backend("cpu")
    ids = torch.randint(3, 49152, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    machine = cpu_description()
    print(f"machine: {describe_cpu(machine)}", flush=True)
    bandwidth = cpu.copy_bandwidth()
    figures = {**machine, "model": args.model, "prompt": args.prompt, "new_tokens": args.new,
               "copy_bandwidth_gbs": bandwidth / 1e9, "rows": []}

    def row(engine: str, ms: float, first_s: float, prompt_tokens: int, streamed: int) -> None:
        floor = streamed / bandwidth * 1e3
        figures["rows"].append({"engine": engine, "ms_per_token": ms,
                                "prefill_tokens_per_s": prompt_tokens / first_s,
                                "streamed_mb": streamed / 1e6, "floor_ms": floor,
                                "pct_of_floor": 100 * floor / ms})
        print(f"  {engine}: {ms:.1f} ms/token", flush=True)

    ms, first, streamed = transformers_figures(path, ids, mask, args.new, args.repeats)
    row("transformers fp32", ms, first, args.prompt, streamed)
    for label, dtype, compiled, cpu_dense in (("ours fp32 F.linear", "fp32", True, False),
                                              ("ours fp32 eager", "fp32", False, True),
                                              ("ours fp32", "fp32", True, True),
                                              ("ours bf16", "bf16", True, True),
                                              ("ours w8a16", "w8a16", True, True),
                                              ("ours w8a8", "w8a8", True, True)):
        runner = PortedRunner(path, Precision.of(dtype), hardware=cpu, compile=compiled,
                              cpu_dense=cpu_dense)
        ms, first = measure(lambda n, r=runner: r.generate(ids, mask, n), args.new,
                            args.repeats)
        row(label, ms, first, args.prompt, runner.streamed_weight_bytes())
        del runner

    if kinds:
        from transformers import AutoTokenizer

        from harness.ports.llama_server import shipped_gguf

        text = AutoTokenizer.from_pretrained(path).decode(ids[0])
        with tempfile.TemporaryDirectory() as scratch:
            for kind in kinds:
                gguf = shipped_gguf()
                if kind != "q4_1":
                    gguf = convert_gguf(gguf, kind, Path(scratch))
                ms, first, prompt_tokens = llama_figures(
                    gguf, text, args.new, args.repeats, machine["threads"],
                    Path(scratch) / f"server-{kind}.log")
                row(f"llama.cpp {kind}", ms, first, prompt_tokens, gguf_bytes(gguf))

    rows = figures["rows"]
    hf = rows[0]["ms_per_token"]
    ours = next(r["ms_per_token"] for r in rows if r["engine"] == "ours fp32")
    for r in rows:
        r["x_transformers"], r["x_ours_fp32"] = hf / r["ms_per_token"], ours / r["ms_per_token"]
    print(f"{args.model} cpu bs1 in{args.prompt} out{args.new}, copy bandwidth "
          f"{figures['copy_bandwidth_gbs']:.1f} GB/s")
    print(tabulate([[r["engine"], r["ms_per_token"], r["prefill_tokens_per_s"],
                     r["streamed_mb"], r["floor_ms"], r["pct_of_floor"], r["x_transformers"],
                     r["x_ours_fp32"]] for r in rows],
                   headers=["engine", "ms/token", "prefill tok/s", "MB/token", "floor ms",
                            "% of floor", "x transformers", "x ours fp32"],
                   floatfmt=("", ".1f", ".0f", ".0f", ".1f", ".0f", ".2f", ".2f")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()

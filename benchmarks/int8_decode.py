"""INT8 decode speed: W8A16 and W8A8 against our fp32 engine, transformers fp32 `generate`
and the int8 bandwidth floor, all measured in this one process.

Default: smollm2-135m, CPU, batch 1, 128-token prompt, 64 new tokens. Per-token time is
(time to generate N tokens - time to generate 1) / (N - 1), best of --repeats, so prefill
cancels out. The floor of a scheme is the time to stream the bytes a decode step reads (int8
weights, their scales, the float norms, the LM head) once at the measured copy bandwidth.
With --profile, the operators that take a W8A16 decode step's time are listed.

    .venv/bin/python benchmarks/int8_decode.py [--profile]
"""

from __future__ import annotations

import argparse
import json

import torch
from engine_decode import per_token_ms, transformers_ms  # this directory

from harness.checkpoints import embedded_checkpoint
from harness.devices import cpu_description, describe_cpu, get_backend
from harness.ports.engine import PortedRunner
from models.precision import Precision

TARGET = 2.5  # W8A16 decode at least this many times faster per token than transformers fp32


def profile(runner, ids, mask, steps: int = 16) -> str:
    """The operators of `steps` decode steps, by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    engine = runner.engine
    engine.reserve(steps)
    logits = engine.prefill(ids, mask)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            logits = engine.decode(logits.argmax(-1))
    engine.reset()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="where W8A16's time goes")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    path = embedded_checkpoint(args.model)
    cpu = get_backend("cpu")
    ids = torch.randint(3, 49152, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    machine = cpu_description()
    print(f"machine: {describe_cpu(machine)}")
    figures = {**machine, "model": args.model, "prompt": args.prompt, "new_tokens": args.new}
    bandwidth = cpu.copy_bandwidth()
    figures["copy_bandwidth_gbs"] = bandwidth / 1e9

    for dtype in ("fp32", "w8a16", "w8a8"):
        runner = PortedRunner(path, Precision.of(dtype), hardware=cpu, compile=True)
        figures[f"{dtype}_ms"] = per_token_ms(lambda n, r=runner: r.generate(ids, mask, n),
                                              args.new, args.repeats)
        streamed = runner.streamed_weight_bytes()
        figures[f"{dtype}_streamed_mb"] = streamed / 1e6
        figures[f"{dtype}_floor_ms"] = streamed / bandwidth * 1e3
        if args.profile and dtype == "w8a16":
            print(profile(runner, ids, mask))
        del runner

    figures["transformers_fp32_ms"] = transformers_ms(path, ids, mask, args.new, args.repeats)

    hf = figures["transformers_fp32_ms"]
    print(f"{args.model} cpu bs1 in{args.prompt} out{args.new}, {figures['threads']} threads, "
          f"copy bandwidth {figures['copy_bandwidth_gbs']:.1f} GB/s; "
          f"transformers fp32 {hf:.1f} ms/token")
    for dtype in ("fp32", "w8a16", "w8a8"):
        ms, floor = figures[f"{dtype}_ms"], figures[f"{dtype}_floor_ms"]
        figures[f"{dtype}_speedup_vs_transformers"] = hf / ms
        figures[f"{dtype}_speedup_vs_ours_fp32"] = figures["fp32_ms"] / ms
        figures[f"{dtype}_pct_of_floor"] = 100 * floor / ms
        print(f"  ours {dtype:5}: {ms:6.1f} ms/token, {hf / ms:4.2f}x transformers fp32, "
              f"{figures['fp32_ms'] / ms:4.2f}x our fp32, floor {floor:4.1f} ms "
              f"({figures[f'{dtype}_streamed_mb']:.0f} MB) = {100 * floor / ms:3.0f}% of it")
    reached = figures["w8a16_speedup_vs_transformers"]
    print(f"W8A16 target >= {TARGET}x transformers fp32: {reached:.2f}x "
          f"({'met' if reached >= TARGET else 'not met'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()

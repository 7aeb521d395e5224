"""Decode speed of the ported engine vs transformers `generate`, and vs the bandwidth floor.

Default: smollm2-135m, CPU, fp32, batch 1, 128-token prompt, 64 new tokens. Per-token time is
(time to generate N tokens - time to generate 1 token) / (N - 1), so prefill cancels out;
each figure is the best of --repeats runs, all measured in this one process. The floor is the
time to stream every weight byte once at the measured copy bandwidth.

    .venv/bin/python benchmarks/engine_decode.py
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from harness.checkpoints import embedded_checkpoint
from harness.devices import cpu_description, describe_cpu, get_backend
from harness.reference import load_reference
from harness.runners import PortedRunner


def per_token_ms(run, new_tokens: int, repeats: int) -> float:
    """Best-of-repeats decode time per token of `run(n)`, which generates n tokens."""
    run(2)  # warm up (and compile, where the engine compiles)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(1)
        one = time.perf_counter() - start
        start = time.perf_counter()
        run(new_tokens)
        many = time.perf_counter() - start
        best = min(best, (many - one) / (new_tokens - 1) * 1e3)
    return best


def transformers_ms(path, ids, mask, new_tokens: int, repeats: int) -> float:
    """`transformers` fp32 `generate`, per new token, measured as `per_token_ms` does."""
    reference = load_reference(path)
    return per_token_ms(
        lambda n: reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                                     min_new_tokens=n, do_sample=False, pad_token_id=0),
        new_tokens, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    path = embedded_checkpoint(args.model)
    ids = torch.randint(3, 49152, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    machine = cpu_description()
    print(f"machine: {describe_cpu(machine)}")
    figures = {**machine, "model": args.model, "prompt": args.prompt, "new_tokens": args.new}

    for label, compiled in (("ours_eager", False), ("ours", True)):
        runner = PortedRunner(path, compile=compiled)
        figures[f"{label}_ms"] = per_token_ms(lambda n, r=runner: r.generate(ids, mask, n),
                                              args.new, args.repeats)
        weight_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
        del runner

    figures["transformers_ms"] = transformers_ms(path, ids, mask, args.new, args.repeats)

    bandwidth = get_backend("cpu").copy_bandwidth()
    floor_ms = weight_bytes / bandwidth * 1e3
    figures.update(weight_mb=weight_bytes / 1e6, copy_bandwidth_gbs=bandwidth / 1e9,
                   floor_ms=floor_ms, ratio=figures["ours_ms"] / figures["transformers_ms"],
                   eager_ratio=figures["ours_eager_ms"] / figures["transformers_ms"],
                   pct_of_floor=100 * floor_ms / figures["ours_ms"])
    print(f"{args.model} cpu fp32 bs1 in{args.prompt} out{args.new}: "
          f"ours {figures['ours_ms']:.1f} ms/token "
          f"(compiled; eager {figures['ours_eager_ms']:.1f}), "
          f"transformers {figures['transformers_ms']:.1f} ms/token, "
          f"ratio {figures['ratio']:.2f} (eager {figures['eager_ratio']:.2f}; target <= 0.75), "
          f"copy bandwidth {figures['copy_bandwidth_gbs']:.1f} GB/s, "
          f"floor {floor_ms:.1f} ms/token for {figures['weight_mb']:.0f} MB, "
          f"ours at {figures['pct_of_floor']:.0f}% of the floor (target >= 75%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()

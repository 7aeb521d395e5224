"""What the perf suite's timing loop adds to a decode step, measured in one run.

An empty runner (a `DummyRunner` of no cost: its decode returns ready logits) goes through
the same loop as a real model, so its decode-step samples are the loop's own cost inside that
measurement: the synchronised timer and picking the token. That is compared with a real
decode step of smollm2-135m (CPU, fp32, batch 1) timed through the same loop. The pre/post
phases (building the next input, streaming detokenisation) are timed apart and are reported
too.

    .venv/bin/python benchmarks/perf_loop_overhead.py
"""

from __future__ import annotations

import argparse
import statistics

from transformers import AutoTokenizer

from harness.checkpoints import embedded_checkpoint
from harness.devices import get_backend
from harness.perf.timing import measure
from harness.ports.engine import PortedRunner
from harness.testing import DummyRunner


def per_step_us(samples, name: str) -> float:
    return statistics.median(ms for steps in getattr(samples, name) for ms in steps) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--in-len", type=int, default=128)
    parser.add_argument("--out-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    path = embedded_checkpoint(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    cpu = get_backend("cpu")
    runner = PortedRunner(path, device_logits=True)
    real = measure(runner, tokenizer, cpu, 1, args.in_len, args.out_len, args.repeats, 1)
    empty = measure(DummyRunner(runner.config.vocab_size, pattern=False), tokenizer, cpu, 1,
                    args.in_len, args.out_len, args.repeats, 1)
    step_us = per_step_us(real, "decode_ms")
    loop_us = per_step_us(empty, "decode_ms")
    pre_post_us = per_step_us(empty, "pre_ms") + per_step_us(empty, "post_ms")
    print(f"{args.model} cpu fp32 bs1 in{args.in_len} out{args.out_len}: decode step "
          f"{step_us / 1e3:.2f} ms; the loop inside a decode-step sample (timer + token pick, "
          f"empty runner) {loop_us:.1f} us = {100 * loop_us / step_us:.2f}% of it (target "
          f"< 1%); pre + post per step, timed apart, {pre_post_us:.1f} us")


if __name__ == "__main__":
    main()

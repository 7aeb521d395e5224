"""fp32 matrix-vector kernels at batch 1: how fast each streams smollm2-135m's projection
weights, all measured in this one process.

A decode step at batch 1 is a 1 x K by K x N product per projection; the weights are read
once, from memory rather than cache (30 layers' distinct matrices, 425 MB, cycle through
each pass). Compared: `F.linear` and `torch.mv` (torch's BLAS, MKL in the x86 wheels), oneDNN's
linear (`torch.ops.mkldnn._linear_pointwise`, what inductor's freezing pass uses) on the plain
weight and on one reordered once into its own layout, MKL's packed sgemm
(`torch.ops.mkl._mkl_linear`), and the product written as a multiply-and-sum that
`torch.compile` turns into a loop of its own (inductor's C++ reduction; each call here also
pays the compiled function's guards, which a whole compiled decode step pays once).
Best of --repeats passes; GB/s counts weight bytes read. To see an AVX2 machine's code paths
on an AVX-512 one, run it under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2.

    .venv/bin/python benchmarks/linear_kernels.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from harness.devices import cpu_description, describe_cpu

# (out, in) of one smollm2-135m layer's q, k, v, o, gate, up, down projections
SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
LAYERS = 30


@torch.compile(dynamic=False)
def reduction(x, w):
    return (x[:, None, :] * w[None]).sum(-1)


def best_seconds(step, weights, inputs, repeats: int) -> float:
    for _ in range(2):
        for w in weights:
            step(inputs[w[0].shape[1]], w)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for w in weights:
            step(inputs[w[0].shape[1]], w)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {describe_cpu(cpu_description())}")
    torch.manual_seed(0)
    plain = [torch.randn(n, k) for _ in range(LAYERS) for n, k in SHAPES]
    inputs = {k: torch.randn(1, k) for _, k in SHAPES}
    mb = sum(w.nbytes for w in plain) / 1e6
    kernels = {
        "F.linear": ([(w,) for w in plain], lambda x, w: F.linear(x, w[0])),
        "torch.mv": ([(w,) for w in plain], lambda x, w: torch.mv(w[0], x[0])),
        "oneDNN linear, plain weight": (
            [(w,) for w in plain],
            lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w[0], None, "none", [], "")),
        "oneDNN linear, reordered weight": (
            [(w, torch.ops.mkldnn._reorder_linear_weight(w, 1)) for w in plain],
            lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w[1], None, "none", [], "")),
        "MKL packed sgemm": (
            [(w, torch.ops.mkl._mkl_reorder_linear_weight(w, 1)) for w in plain],
            lambda x, w: torch.ops.mkl._mkl_linear(x, w[1], w[0], None, 1)),
        "inductor multiply-and-sum": ([(w,) for w in plain], lambda x, w: reduction(x, w[0])),
    }
    for name, (weights, step) in kernels.items():
        check = step(inputs[weights[0][0].shape[1]], weights[0])
        error = (check - F.linear(inputs[plain[0].shape[1]], plain[0])).abs().max().item()
        seconds = best_seconds(step, weights, inputs, args.repeats)
        print(f"{name:32s} {seconds * 1e3:6.2f} ms  {mb / seconds / 1e3:5.1f} GB/s "
              f"({mb:.0f} MB; max |difference| from F.linear {error:.1e})")


if __name__ == "__main__":
    main()

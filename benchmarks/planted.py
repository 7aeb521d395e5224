"""Planted degradations of a model, as plug-in runners: ports known to be worse, which the
accuracy gates must fail, beside runs that must pass.

Each factory is a `--port NAME=benchmarks.planted:FACTORY` runner: transformers on the CPU
(the reference) with one fault planted in its weights, seeded, so every run plants the same:

  noise05, noise10, noise20  Gaussian noise of 5/10/20% of each weight matrix's standard
                             deviation added to every linear layer's weight
  misscaled                  one MLP down-projection quantized to int8 per output channel
                             with its scales 25% too large (a wrong scale in a port's
                             weight converter)
  dropped                    one decoder layer made the identity (its attention output and
                             MLP down-projections zeroed, so the residual passes through)

`benchmarks/planted_degradations.py` runs them and reports what each gate concluded.
"""

from __future__ import annotations

import torch

from harness.reference_runner import ReferenceRunner

SEED = 0
LAYER = 3  # the layer the single-layer faults hit


def _linears(model) -> list[torch.nn.Linear]:
    return [m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "lm_head" not in name]


def _layer(model, index: int):
    return model.model.layers[index]


@torch.no_grad()
def _noise(runner: ReferenceRunner, strength: float) -> ReferenceRunner:
    generator = torch.Generator().manual_seed(SEED)
    for linear in _linears(runner.model):
        w = linear.weight
        w += torch.randn(w.shape, generator=generator, dtype=w.dtype) * (strength * w.std())
    return runner


def noise05(path, *, model, precision, hardware):
    return _noise(ReferenceRunner(path, precision), 0.05)


def noise10(path, *, model, precision, hardware):
    return _noise(ReferenceRunner(path, precision), 0.10)


def noise20(path, *, model, precision, hardware):
    return _noise(ReferenceRunner(path, precision), 0.20)


@torch.no_grad()
def misscaled(path, *, model, precision, hardware):
    runner = ReferenceRunner(path, precision)
    w = _layer(runner.model, LAYER).mlp.down_proj.weight
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    q = torch.clamp(torch.round(w / scale), -127, 127)
    w.copy_(q * (scale * 1.25))
    return runner


@torch.no_grad()
def dropped(path, *, model, precision, hardware):
    runner = ReferenceRunner(path, precision)
    layer = _layer(runner.model, LAYER)
    layer.self_attn.o_proj.weight.zero_()
    layer.mlp.down_proj.weight.zero_()
    return runner

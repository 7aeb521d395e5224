"""Where in the model a port leaves the reference: the first block whose output is beyond
the tolerance its dtype allows, found by re-running one row of a case with forward hooks on
the hook points of `harness.layer_hooks` (the embeddings, and each decoder layer's
attention and MLP, their inputs and the layer's output), matched by layer index.

A point's error is the relative Frobenius distance, over the row's real positions at the step
re-run, from the fp32 reference's value there. fp32 allows `fp32_relative`; another dtype
allows `relative_to_reference` times what transformers in that dtype (or the int8 scheme
simulated in floating point) shows at the same point, plus `fp32_relative`
(`[layers]` in thresholds.toml).

The re-run is separate from the measured run: the gated figures never pass through a hook.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from harness.layer_hooks import NotLocalizable, Recorder
from harness.runners import ExposesModule, RecordsLayers
from harness.seam import CheckedRunner


def drive(runner, run: dict[str, Tensor], step: int) -> None:
    """The case's prefill and its first `step` forced decode steps: the last call is the one
    re-examined."""
    with torch.inference_mode():
        runner.prefill(run["ids"], run["mask"])
        for tokens in run["tokens"][:step]:
            runner.decode(tokens)
        runner.reset()


def layer_values(runner, run: dict[str, Tensor], step: int, row: int) -> list[dict[str, Tensor]]:
    """Each hook point's value on `row` at `step` (0: the prefill), restricted to the row's
    real positions: one dict per rank (a tensor-parallel runner gathers its ranks')."""
    positions = int(run["mask"][row].sum()) if step == 0 else 1
    port = runner.port if isinstance(runner, CheckedRunner) else runner
    if isinstance(port, RecordsLayers):
        with port.recording(row) as per_rank:
            drive(runner, run, step)
    else:
        if not isinstance(port, ExposesModule) or not isinstance(port.model, nn.Module):
            raise NotLocalizable(f"the port ({type(port).__name__}) exposes no torch module "
                                 "as `model`")
        if port.world_size > 1:
            raise NotLocalizable(f"{type(port).__name__} runs over {port.world_size} "
                                 "processes and records only its own")
        with Recorder(port.model, row) as recorder:
            drive(runner, run, step)
        per_rank = [recorder.close()]
    return [{label: value[-positions:] for label, value in values.items()}
            for values in per_rank]


def relative_errors(values: dict[str, Tensor], truth: dict[str, Tensor]) -> dict[str, float]:
    """Per point both have, |values - truth| / |truth| (Frobenius); NaN where the shapes
    differ."""
    errors = {}
    for label, expected in truth.items():
        got = values.get(label)
        if got is None:
            continue
        if got.shape != expected.shape:
            errors[label] = math.nan
            continue
        scale = expected.double().norm().item()
        errors[label] = (got.double() - expected.double()).norm().item() / max(scale, 1e-30)
    return errors


def tolerances(labels: list[str], dtype_reference: dict[str, float] | None,
               limits: dict) -> dict[str, float]:
    """What each point may differ: `fp32_relative`, or for another dtype
    `relative_to_reference` x transformers' own error there + `fp32_relative`."""
    floor = limits["fp32_relative"]
    if dtype_reference is None:
        return {label: floor for label in labels}
    factor = limits["relative_to_reference"]
    return {label: factor * dtype_reference.get(label, math.inf) + floor for label in labels}


def first_beyond(per_rank: list[dict[str, float]],
                 allowed: dict[str, float]) -> tuple[str, dict] | None:
    """The first point in forward order where any rank's error is beyond what is allowed
    (NaN counts), as (its words, record fields); None where every point is within."""
    labels = list(per_rank[0])
    seen = []
    for label in labels:
        for rank, errors in enumerate(per_rank):
            error = errors.get(label, math.nan)
            if not error <= allowed[label]:
                previous = max(seen, default=0.0)
                on_rank = f" on rank {rank}" if len(per_rank) > 1 else ""
                words = (f"{label}{on_rank}, rel err {error:.1e} > {allowed[label]:.1e}, "
                         f"previous max {previous:.1e}")
                return words, {"first_divergence": words, "first_divergence_block": label,
                               "first_divergence_block_rank": rank,
                               "first_divergence_block_error": error,
                               "first_divergence_block_previous_max": previous}
        seen += [errors[label] for errors in per_rank if label in errors]
    return None


def localize_layers(port, reference, dtype_reference, run: dict[str, Tensor], step: int,
                    row: int, limits: dict) -> tuple[str, dict]:
    """Re-run `row` of a case up to `step` on the port, the fp32 reference and (for another
    dtype) transformers in that dtype, with hooks; (a line for the failure message, record
    fields). `dtype_reference` is None for fp32, else a callable giving that runner (so it
    is loaded only once the others are done)."""
    truth = layer_values(reference, run, step, row)[0]
    ours = [relative_errors(values, truth) for values in layer_values(port, run, step, row)]
    theirs = None
    if dtype_reference is not None:
        theirs = relative_errors(layer_values(dtype_reference(), run, step, row)[0], truth)
    allowed = tolerances(list(ours[0]), theirs, limits)
    fields = {"block_labels": list(ours[0]),
              "block_rel_err": [max(e.get(label, math.nan) for e in ours)
                                for label in ours[0]],
              "block_allowed": [allowed[label] for label in ours[0]]}
    if not ours[0]:
        return "layer localization: no hook point of the port matched the reference's", fields
    found = first_beyond(ours, allowed)
    where = f"step {step}, row {row}"
    if found is None:
        return (f"every block within its tolerance at {where}, through the last layer's "
                "output: the difference arises after it (final norm, LM head) or outside "
                "the model's forward"), fields
    words, extra = found
    fields.update(extra)
    return f"first block beyond its tolerance ({where}): {words}", fields


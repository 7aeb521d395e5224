"""Where in the model a port leaves the reference: the first block whose output is beyond
the tolerance its dtype allows, found by re-running one row of a case with forward hooks.

The hook points, in the order a forward pass reaches them: the token embeddings, then for
every decoder layer i its attention's input (the norm before it), the attention's output, the
MLP's input and output, and the layer's output: `embed`, `layer i attn norm`, `layer i attn`,
`layer i mlp norm`, `layer i mlp`, `layer i`. They are found the same way in our engine
(`DecoderLM.blocks`, each with `attn` and `mlp`) and in a transformers model (its longest
module list of decoder layers, each with `self_attn`/`self_attention`/`attn` and
`mlp`/`feed_forward`), so the port and the reference are matched by layer index. Where a
family's sub-block adds the residual itself (BLOOM's attention and MLP take a `residual`
argument), the residual is taken off its output, as our engine's blocks add it outside.

A point's error is the relative Frobenius distance, over the row's real positions at the step
re-run, from the fp32 reference's value there. fp32 allows `fp32_relative`; another dtype
allows `relative_to_reference` times what transformers in that dtype (or the int8 scheme
simulated in floating point) shows at the same point, plus `fp32_relative`
(`[layers]` in thresholds.toml).

The re-run is separate from the measured run: the gated figures never pass through a hook.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn

from harness.seam import CheckedRunner

ATTENTION = ("self_attn", "self_attention", "attn", "attention")
MLP = ("mlp", "feed_forward", "ffn")


class NotLocalizable(Exception):
    """The port exposes no torch module to hook (a served port, a plug-in without `model`)."""


def _child(layer: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    return next((getattr(layer, n) for n in names
                 if isinstance(getattr(layer, n, None), nn.Module)), None)


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The longest module list whose layers have an attention sub-block: the decoder layers
    (`DecoderLM.blocks`, Llama's `model.layers`, GPT-2 style `transformer.h`, ...)."""
    found = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)
             and _child(m[0], ATTENTION) is not None]
    if not found:
        raise NotLocalizable(f"{type(model).__name__} has no list of decoder layers with an "
                             f"attention sub-block ({'/'.join(ATTENTION)})")
    return max(found, key=len)


def _embedding(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else getattr(model, "embed", None)
    return embedding if isinstance(embedding, nn.Module) else None


def hook_points(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(label, module, "input" or "output") in forward order."""
    points = []
    embedding = _embedding(model)
    if embedding is not None:
        points.append(("embed", embedding, "output"))
    for i, layer in enumerate(_decoder_layers(model)):
        attn, mlp = _child(layer, ATTENTION), _child(layer, MLP)
        points += [(f"layer {i} attn norm", attn, "input"), (f"layer {i} attn", attn, "output")]
        if mlp is not None:
            points += [(f"layer {i} mlp norm", mlp, "input"), (f"layer {i} mlp", mlp, "output")]
        points.append((f"layer {i}", layer, "output"))
    return points


def _first_tensor(value):
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    return value if isinstance(value, Tensor) else None


class Recorder:
    """Forward hooks on a model's `hook_points`, keeping one row of each point's value at
    the latest call (a clone in float32 on the CPU: a family may add into its output in
    place afterwards). Use as a context manager; the hooks are removed on exit."""

    def __init__(self, model: nn.Module, row: int):
        self.row, self.values = row, {}
        self.order = []
        self._handles = []
        for label, module, where in hook_points(model):
            self.order.append(label)
            if where == "input":
                hook = self._input_hook(label)
                self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                takes_residual = "residual" in inspect.signature(module.forward).parameters
                hook = self._output_hook(label, module if takes_residual else None)
                self._handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def _keep(self, label: str, value) -> None:
        tensor = _first_tensor(value)
        if tensor is not None and tensor.dim() == 3:  # (B, T, C)
            self.values[label] = tensor[self.row].detach().float().cpu().clone()

    def _input_hook(self, label: str):
        def hook(module, args, kwargs):
            self._keep(label, args[0] if args else kwargs.get("hidden_states"))
        return hook

    def _output_hook(self, label: str, residual_of: nn.Module | None):
        def hook(module, args, kwargs, output):
            output = _first_tensor(output)
            if residual_of is not None and output is not None:
                bound = inspect.signature(residual_of.forward).bind_partial(*args, **kwargs)
                residual = bound.arguments.get("residual")
                if isinstance(residual, Tensor):
                    output = output - residual
            self._keep(label, output)
        return hook

    def close(self) -> dict[str, Tensor]:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return {label: self.values[label] for label in self.order if label in self.values}

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    from harness.tp import TensorParallelRunner  # it imports this module's `Recorder`

    port = runner.port if isinstance(runner, CheckedRunner) else runner
    if isinstance(port, TensorParallelRunner):
        with port.recording(row) as per_rank:
            drive(runner, run, step)
    else:
        model = getattr(port, "model", None)
        if not isinstance(model, nn.Module):
            raise NotLocalizable(f"the port ({type(port).__name__}) exposes no torch module "
                                 "as `model`")
        if port.world_size > 1:
            raise NotLocalizable(f"{type(port).__name__} runs over {port.world_size} "
                                 "processes and records only its own")
        with Recorder(model, row) as recorder:
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


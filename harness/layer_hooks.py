"""The hook points of a decoder model and a recorder of their values on one row.

The hook points, in the order a forward pass reaches them: the token embeddings, then for
every decoder layer i its attention's input (the norm before it), the attention's output, the
MLP's input and output, and the layer's output: `embed`, `layer i attn norm`, `layer i attn`,
`layer i mlp norm`, `layer i mlp`, `layer i`. They are found the same way in our engine
(`DecoderLM.blocks`, each with `attn` and `mlp`) and in a transformers model (its longest
module list of decoder layers, each with `self_attn`/`self_attention`/`attn` and
`mlp`/`feed_forward`), so the port and the reference are matched by layer index. Where a
family's sub-block adds the residual itself (BLOOM's attention and MLP take a `residual`
argument), the residual is taken off its output, as our engine's blocks add it outside.
"""

from __future__ import annotations

import inspect

from torch import Tensor, nn

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

"""From a checkpoint directory to a ported model on a device.

`build_model` is the one model builder: what a runner, a tensor-parallel rank and `llmgate
weights` run (load, quantize, split, cast; then, on the CPU in fp32, oneDNN's kernels).
`load_model` reads a checkpoint as it is.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from models import bloom, falcon, llama, ported, qwen, starcoder
from models.checkpoint import Checkpoint, CheckpointError, HFConfig
from models.config import ModelConfig
from models.layers import can_use_cpu_dense
from models.parallel import parallelize_
from models.precision import Precision
from models.quant import (
    SCHEMES,
    cast_floats_,
    prepare_quantized,
    quantizable,
    quantize_,
    quantize_rows,
)
from models.transformer import DecoderLM, cpu_dense_

FAMILY_MODULES: dict[str, ModuleType] = {
    "llama": llama, "qwen": qwen, "falcon": falcon, "bloom": bloom, "starcoder": starcoder}
_BY_MODEL_TYPE = {t: m for m in FAMILY_MODULES.values() for t in m.MODEL_TYPES}


def family_module(hf: HFConfig) -> ModuleType:
    """The family file for a config.json, chosen by its `model_type`."""
    model_type = hf.data.get("model_type")
    if model_type not in _BY_MODEL_TYPE:
        raise CheckpointError(f"{hf.path}: field 'model_type' is {model_type!r}, expected one "
                              f"of {', '.join(sorted(_BY_MODEL_TYPE))}")
    return _BY_MODEL_TYPE[model_type]


def model_config(hf: HFConfig, name: str) -> ModelConfig:
    return family_module(hf).config_from_hf(hf, name)


def load_model(path: str | Path, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", name: str | None = None) -> DecoderLM:
    """Build the ported model for a checkpoint directory and load its weights.

    The model is built on the meta device and materialised once, directly in `dtype` on
    `device`; each checkpoint tensor is converted and copied in, one at a time.
    """
    return _load(Checkpoint(path), dtype, device, name or Path(path).name)


def build_model(path: str | Path, precision: Precision, *, rank: int = 0, world_size: int = 1,
                lm_head: bool = False, device: str | torch.device = "cpu",
                cpu_dense: bool = True) -> DecoderLM:
    """The model a case runs: rank `rank` of `world_size`, in `precision` (its int8 scheme on
    every linear layer but the LM head, unless `lm_head`).

    A quantized or split checkpoint (`llmgate weights quant|cut`) is read as stored and must
    hold what `precision` asks for. A float checkpoint is loaded in the activation dtype, each
    linear weight quantized as it is read; cut on the fly for `world_size` > 1, it is built
    whole in float32 first, then quantized, cut and cast (each rank holds the float32 model
    while it builds: `llmgate weights cut` avoids that). On the CPU (`cpu_dense`), the float
    dense layers then run on the faster kernels of `models.transformer.cpu_dense_`.
    """
    parts = ported.part_dirs(path)
    if parts is not None:
        ported.check_parts(path, world_size)
        path = parts[rank]
    ckpt = Checkpoint(path)
    stored = ported.scheme_of(ckpt.config.data)
    if stored != precision.scheme and (stored is not None or parts is not None):
        ckpt.close()
        raise CheckpointError(f"{path}: holds {stored or 'float'} weights, but the case asks "
                              f"for {precision.scheme or 'float'} weights (choose --dtype "
                              f"{stored or 'fp32'})")
    if parts is not None or world_size == 1:
        scheme = precision.scheme if stored is None else None
        model = _load(ckpt, precision.dtype, device, Path(path).name, scheme, lm_head)
    else:
        model = _load(ckpt, torch.float32, device, Path(path).name)  # (or int8 as stored)
        if precision.scheme is not None and stored is None:
            quantize_(model, SCHEMES[precision.scheme], include_lm_head=lm_head)
        parallelize_(model, rank, world_size)
        model = cast_floats_(model, precision.dtype)
        if torch.device(device).type != "cpu":  # the float32 blocks, out of the allocator's
            getattr(torch, torch.device(device).type).empty_cache()  # cache (mem_get_info)
    if cpu_dense and can_use_cpu_dense(device, precision.dtype):
        cpu_dense_(model)
    return model


def _load(ckpt: Checkpoint, dtype: torch.dtype, device, name: str, scheme: str | None = None,
          lm_head: bool = False) -> DecoderLM:
    """Materialise the model once, in `dtype` on `device`, and copy each checkpoint tensor in
    as it is read; with an int8 `scheme`, each linear weight is quantized as it arrives, so
    no float copy of the quantized layers is ever held (the peak is the int8 model plus one
    tensor)."""
    family = family_module(ckpt.config)
    if ported.is_ported(ckpt.config.data):
        model = ported.load(ckpt, family, dtype, device)
        ckpt.close()
        return model.eval()
    ckpt.refuse_quantized()
    cfg = family.config_from_hf(ckpt.config, name)
    with torch.device("meta"):
        model = family.build(cfg).to(dtype)
        int8_from = _prepare_int8(model, scheme, lm_head) if scheme else {}
    model.to_empty(device=device)
    params = dict(model.named_parameters())
    layers = dict(model.named_modules())
    unloaded = set(params) | set(int8_from)
    with torch.no_grad():
        for ours, tensor in family.convert(cfg, ckpt):
            targets = [(params[ours], tensor)] if ours in params else []
            if ours in int8_from:
                weight_int8, scale = quantize_rows(tensor)
                for layer in int8_from[ours]:
                    targets += [(layers[layer].weight_int8, weight_int8),
                                (layers[layer].weight_scale, scale)]
            for target, value in targets:
                if tuple(target.shape) != tuple(value.shape):
                    raise CheckpointError(
                        f"{ckpt.path}: converted tensor for {ours!r} has shape "
                        f"{tuple(tensor.shape)}, expected {tuple(target.shape)}")
                target.copy_(value)
            unloaded.discard(ours)
    ckpt.close()
    if unloaded:
        raise CheckpointError(f"{ckpt.path}: no checkpoint tensor for {sorted(unloaded)}")
    if int8_from:  # the int8 layers' scales and biases, made in float32
        cast_floats_(model, dtype)
    return model.eval()


def _prepare_int8(model: DecoderLM, scheme: str, lm_head: bool) -> dict[str, list[str]]:
    """Give the quantizable layers (`quantizable`) empty int8 storage of `scheme`; returns,
    per checkpoint weight name, the layers quantized from it (a tied LM head is quantized from
    the embedding's weight, which stays in floating point for the embedding)."""
    names = quantizable(model, lm_head)
    layers = dict(model.named_modules())
    loaded_as = {id(p): n for n, p in model.named_parameters()}
    sources: dict[str, list[str]] = {}
    for name in names:
        sources.setdefault(loaded_as[id(layers[name].weight)], []).append(name)
    prepare_quantized(model, SCHEMES[scheme], names)
    return sources

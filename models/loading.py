"""From a HuggingFace checkpoint directory to a ported model on a device."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from models import bloom, falcon, llama, ported, qwen, starcoder
from models.checkpoint import Checkpoint, CheckpointError, HFConfig
from models.config import ModelConfig
from models.transformer import DecoderLM

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
    ckpt = Checkpoint(path)
    family = family_module(ckpt.config)
    if ported.is_ported(ckpt.config.data):
        model = ported.load(ckpt, family, dtype, device)
        ckpt.close()
        return model.eval()
    ckpt.refuse_quantized()
    cfg = family.config_from_hf(ckpt.config, name or Path(path).name)
    with torch.device("meta"):
        model = family.build(cfg).to(dtype)
    model.to_empty(device=device)
    params = dict(model.named_parameters())
    unloaded = set(params)
    with torch.no_grad():
        for ours, tensor in family.convert(cfg, ckpt):
            if tuple(params[ours].shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"{ckpt.path}: converted tensor for {ours!r} has shape "
                    f"{tuple(tensor.shape)}, expected {tuple(params[ours].shape)}")
            params[ours].copy_(tensor)
            unloaded.discard(ours)
    ckpt.close()
    if unloaded:
        raise CheckpointError(f"{ckpt.path}: no checkpoint tensor for {sorted(unloaded)}")
    return model.eval()

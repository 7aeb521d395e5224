"""The reference implementation: HuggingFace `transformers` on the CPU.

Every family maps to the transformers class that defines its numerics. Qwen v1 has no class in
transformers; its checkpoints are renamed into `Qwen2ForCausalLM`, which computes the same
function (see `harness/hf_layout.py`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import transformers
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from harness.hf_layout import config_to_hf, v1_to_qwen2
from models.checkpoint import Checkpoint
from models.config import ModelConfig
from models.loading import family_module

HF_CLASSES = {
    "llama": "LlamaForCausalLM", "qwen": "Qwen2ForCausalLM", "falcon": "FalconForCausalLM",
    "bloom": "BloomForCausalLM", "starcoder": "GPTBigCodeForCausalLM"}


def hf_config(cfg: ModelConfig, **overrides) -> transformers.PretrainedConfig:
    if cfg.family == "qwen":  # v1 is computed by Qwen2
        cfg = dataclasses.replace(cfg, variant="qwen2")
    fields = config_to_hf(cfg)
    model_type = fields.pop("model_type")
    fields.pop("architectures")
    config = transformers.AutoConfig.for_model(model_type, **fields, **overrides)
    config.architectures = [HF_CLASSES[cfg.family]]
    return config


def hf_model(cfg: ModelConfig, dtype: torch.dtype = torch.float32,
             **overrides) -> transformers.PreTrainedModel:
    """A randomly initialised transformers model of this structure."""
    model_class = getattr(transformers, HF_CLASSES[cfg.family])
    return model_class(hf_config(cfg, **overrides)).to(dtype).eval()


def load_reference(path: str | Path, dtype: torch.dtype = torch.float32):
    """The transformers model for a checkpoint directory, on the CPU, in `dtype`."""
    ckpt = Checkpoint(path)
    ckpt.refuse_quantized()  # transformers would read it as floats, agreeing with our misreading
    if ckpt.config.data.get("model_type") == "qwen":  # v1, which transformers has no class for
        cfg = family_module(ckpt.config).config_from_hf(ckpt.config, Path(path).name)
        model = hf_model(cfg, dtype=dtype)
        shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()
                  if not (cfg.tie_embeddings and name == "lm_head.weight")}
        model.load_state_dict(v1_to_qwen2(cfg, ckpt, shapes), strict=not cfg.tie_embeddings)
        ckpt.close()
        return model
    config = transformers.AutoConfig.from_pretrained(path)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    slices = ckpt.slices()
    if model_class is None or slices is None:  # .bin files: transformers reads them itself
        ckpt.close()
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    # transformers would memory-map the files and keep every page it read resident until
    # the model is dropped: given the tensors read with pread, the model owns its bytes and
    # the host holds them once (fake-quantized weights replace, not join, the originals).
    model = model_class.from_pretrained(None, config=config, state_dict=slices, dtype=dtype)
    ckpt.close()
    return model.eval()


def fake_quantize_(model: torch.nn.Module, scheme: str, lm_head: bool = False
                   ) -> torch.nn.Module:
    """transformers with `scheme` simulated in floating point: every linear layer but the LM
    head (unless `lm_head`) gets quantize-dequantized weights (per output channel, as ours);
    for W8A8 its input is quantize-dequantized per token too. A plain restatement of the
    scheme, to check that our int8 kernels add nothing to its error."""
    from models.quant import quantize_rows

    embedding = model.get_input_embeddings().weight
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or (name.endswith("lm_head") and not lm_head):
            continue
        if module.weight is embedding:  # a head tied to the embedding stays float (as ours)
            continue
        weight, scale = quantize_rows(module.weight.data)
        # In place: a new tensor per layer would hold the float copy and the new one at once.
        module.weight.data.copy_(weight.float() * scale[:, None])
        if scheme == "w8a8":
            module.register_forward_pre_hook(_fake_quantize_input)
    return model


def _fake_quantize_input(module, inputs):
    from models.quant import quantize_tokens

    (x,) = inputs
    values, scale = quantize_tokens(x)
    return ((values.float() * scale).to(x.dtype),)

"""Qwen-7B (v1, `QWenLMHeadModel`) and Qwen2. Reference: transformers `Qwen2ForCausalLM`.

Structurally Qwen is Llama with q/k/v biases, so `llama.build` wires it. The v1 checkpoint
layout differs: `transformer.h.N.attn.c_attn` is already a fused [q|k|v] projection with bias,
`mlp.w2` is the SiLU-gated branch and `mlp.w1` the linear one, and its config counts both MLP
branches in `intermediate_size`. The v1 long-context tricks (logn attention, dynamic NTK) only
act beyond `seq_length`, which is therefore the longest sequence llmgate accepts.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from models import llama
from models.checkpoint import Checkpoint, HFConfig
from models.config import ModelConfig

MODEL_TYPES = ("qwen", "qwen2")
build = llama.build


def config_from_hf(hf: HFConfig, name: str) -> ModelConfig:
    if hf.data.get("model_type") == "qwen2":
        hf.require("use_sliding_window", (False,), False)
        cfg = llama.config_from_hf(hf, name)
        return ModelConfig(**{**cfg.as_dict(), "family": "qwen", "qkv_bias": True,
                              "variant": "qwen2"})
    hf.require("rotary_pct", (1.0, 1), 1.0)
    hf.require("no_bias", (True,), True)
    heads, hidden = hf.heads("kv_channels")
    return ModelConfig(
        name, "qwen", hf.get("vocab_size"), hidden, hf.get("num_hidden_layers"), heads, heads,
        hf.get("intermediate_size") // 2, hf.get("seq_length", "max_position_embeddings"),
        hf.get("layer_norm_epsilon", kind=float),
        hf.get("tie_word_embeddings", kind=bool, default=False),
        rope_theta=hf.rope_theta("rotary_emb_base"), qkv_bias=True, variant="v1")


def convert(cfg: ModelConfig, ckpt: Checkpoint) -> Iterator[tuple[str, Tensor]]:
    if cfg.variant == "qwen2":
        yield from llama.convert(cfg, ckpt)
        return
    C, V, I = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    yield "embed.weight", ckpt.get("transformer.wte.weight", (V, C))
    for i in range(cfg.num_layers):
        src, dst = f"transformer.h.{i}", f"blocks.{i}"
        # c_attn is already our fused [q|k|v]; w2 is the gated branch.
        yield f"{dst}.attn.qkv.weight", ckpt.get(f"{src}.attn.c_attn.weight", (3 * C, C))
        yield f"{dst}.attn.qkv.bias", ckpt.get(f"{src}.attn.c_attn.bias", (3 * C,))
        yield f"{dst}.attn.out.weight", ckpt.get(f"{src}.attn.c_proj.weight", (C, C))
        yield f"{dst}.mlp.gate_up.weight", torch.cat(
            [ckpt.get(f"{src}.mlp.{n}.weight", (I, C)) for n in ("w2", "w1")])
        yield f"{dst}.mlp.down.weight", ckpt.get(f"{src}.mlp.c_proj.weight", (C, I))
        yield f"{dst}.attn_norm.weight", ckpt.get(f"{src}.ln_1.weight", (C,))
        yield f"{dst}.mlp_norm.weight", ckpt.get(f"{src}.ln_2.weight", (C,))
    yield "final_norm.weight", ckpt.get("transformer.ln_f.weight", (C,))
    if not cfg.tie_embeddings:
        yield "lm_head.weight", ckpt.get("lm_head.weight", (V, C))

"""Llama-2 / Chinese-Alpaca-2 / SmolLM2. Reference: transformers `LlamaForCausalLM`.

Pre-norm blocks (RMSNorm), rotary positions, grouped-query attention, SwiGLU MLP.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from models.attention import Attention
from models.checkpoint import Checkpoint, HFConfig
from models.config import ModelConfig
from models.layers import GatedMLP, Linear, RMSNorm
from models.transformer import Block, DecoderLM

MODEL_TYPES = ("llama", "mistral")


def config_from_hf(hf: HFConfig, name: str) -> ModelConfig:
    """Also Mistral: Llama's structure, attending within a sliding window. Up to the window's
    length that is full attention, so a Mistral model accepts sequences that long at most."""
    hf.require("attention_bias", (False,), False)
    hf.require("mlp_bias", (False,), False)
    heads, hidden = hf.heads("head_dim")
    positions = hf.get("max_position_embeddings")
    window = hf.data.get("sliding_window") if hf.data.get("model_type") == "mistral" else None
    return ModelConfig(
        name, "llama", hf.get("vocab_size"), hidden, hf.get("num_hidden_layers"), heads,
        hf.get("num_key_value_heads", default=heads), hf.get("intermediate_size"),
        min(positions, window) if isinstance(window, int) else positions,
        hf.get("rms_norm_eps", kind=float),
        hf.get("tie_word_embeddings", kind=bool, default=False), rope_theta=hf.rope_theta())


def build(cfg: ModelConfig) -> DecoderLM:
    """Also builds Qwen (v1 and Qwen2): the same structure with q/k/v biases."""
    C, eps = cfg.hidden_size, cfg.norm_eps
    blocks = [
        Block(Attention(C, cfg.num_heads, cfg.num_kv_heads, cfg.qkv_bias, out_bias=False),
              GatedMLP(C, cfg.intermediate_size, bias=False), RMSNorm(C, eps), RMSNorm(C, eps))
        for _ in range(cfg.num_layers)
    ]
    lm_head = None if cfg.tie_embeddings else Linear(C, cfg.vocab_size, False, split="column")
    return DecoderLM(cfg, nn.Embedding(cfg.vocab_size, C), blocks, RMSNorm(C, eps), lm_head,
                     position="rope")


def convert(cfg: ModelConfig, ckpt: Checkpoint) -> Iterator[tuple[str, Tensor]]:
    """HF Llama names (also Qwen2's) -> ours; q/k/v and gate/up are concatenated."""
    C, D, V, I = cfg.hidden_size, cfg.head_dim, cfg.vocab_size, cfg.intermediate_size
    qkv_rows = (("q", cfg.num_heads * D), ("k", cfg.num_kv_heads * D), ("v", cfg.num_kv_heads * D))
    yield "embed.weight", ckpt.get("model.embed_tokens.weight", (V, C))
    for i in range(cfg.num_layers):
        src, dst = f"model.layers.{i}", f"blocks.{i}"
        attn = f"{src}.self_attn"
        yield f"{dst}.attn.qkv.weight", torch.cat(
            [ckpt.get(f"{attn}.{n}_proj.weight", (rows, C)) for n, rows in qkv_rows])
        if cfg.qkv_bias:
            yield f"{dst}.attn.qkv.bias", torch.cat(
                [ckpt.get(f"{attn}.{n}_proj.bias", (rows,)) for n, rows in qkv_rows])
        yield f"{dst}.attn.out.weight", ckpt.get(f"{attn}.o_proj.weight", (C, C))
        yield f"{dst}.mlp.gate_up.weight", torch.cat(
            [ckpt.get(f"{src}.mlp.{n}_proj.weight", (I, C)) for n in ("gate", "up")])
        yield f"{dst}.mlp.down.weight", ckpt.get(f"{src}.mlp.down_proj.weight", (C, I))
        yield f"{dst}.attn_norm.weight", ckpt.get(f"{src}.input_layernorm.weight", (C,))
        yield f"{dst}.mlp_norm.weight", ckpt.get(f"{src}.post_attention_layernorm.weight", (C,))
    yield "final_norm.weight", ckpt.get("model.norm.weight", (C,))
    if not cfg.tie_embeddings:
        yield "lm_head.weight", ckpt.get("lm_head.weight", (V, C))

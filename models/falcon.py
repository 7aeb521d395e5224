"""Falcon-7B (and the `new_decoder_architecture` Falcons). Reference: `FalconForCausalLM`.

Parallel blocks: attention and MLP read the same input and are added to the residual together.
Falcon-7B feeds both from one LayerNorm and uses multi-query attention; the new decoder
architecture has a LayerNorm per branch and grouped-query attention. Rotary positions,
GELU MLP, tied embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from models.attention import Attention
from models.checkpoint import Checkpoint, HFConfig, split_interleaved_qkv
from models.config import ModelConfig
from models.layers import MLP, Linear, layer_norm
from models.transformer import Block, DecoderLM

MODEL_TYPES = ("falcon", "RefinedWeb", "RefinedWebModel")


def config_from_hf(hf: HFConfig, name: str) -> ModelConfig:
    hf.require("alibi", (False,), False)
    hf.require("parallel_attn", (True,), True)
    new_decoder = hf.get("new_decoder_architecture", kind=bool, default=False)
    if new_decoder:
        hf.require("num_ln_in_parallel_attn", (2, None), None)
    heads = hf.get("num_attention_heads", "n_head")
    hidden = hf.get("hidden_size")
    if new_decoder:
        kv_heads = hf.get("num_kv_heads", "n_head_kv")
    else:
        kv_heads = 1 if hf.get("multi_query", kind=bool, default=True) else heads
    bias = hf.get("bias", kind=bool, default=False)
    return ModelConfig(
        name, "falcon", hf.get("vocab_size"), hidden, hf.get("num_hidden_layers", "n_layer"),
        heads, kv_heads, hf.get("ffn_hidden_size", default=4 * hidden),
        hf.get("max_position_embeddings", default=2048),
        hf.get("layer_norm_epsilon", kind=float),
        hf.get("tie_word_embeddings", kind=bool, default=True), rope_theta=hf.rope_theta(),
        qkv_bias=bias, bias=bias, variant="new_decoder" if new_decoder else "")


def build(cfg: ModelConfig) -> DecoderLM:
    C, eps = cfg.hidden_size, cfg.norm_eps
    two_norms = cfg.variant == "new_decoder"
    blocks = [
        Block(Attention(C, cfg.num_heads, cfg.num_kv_heads, cfg.qkv_bias, cfg.bias),
              MLP(C, cfg.intermediate_size, cfg.bias, gelu="none"), layer_norm(C, eps),
              layer_norm(C, eps) if two_norms else None, parallel=True)
        for _ in range(cfg.num_layers)
    ]
    lm_head = None if cfg.tie_embeddings else Linear(C, cfg.vocab_size, False, split="column")
    return DecoderLM(cfg, nn.Embedding(cfg.vocab_size, C), blocks, layer_norm(C, eps), lm_head,
                     position="rope")


def _qkv_to_ours(cfg: ModelConfig, fused: Tensor) -> Tensor:
    """Falcon's fused query_key_value rows -> [q|k|v]."""
    H, KV, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    if cfg.variant == "new_decoder":
        # Grouped per kv head: [q_1 .. q_g, k, v] for each of the KV groups.
        grouped = fused.reshape(KV, H // KV + 2, D, *fused.shape[1:])
        q = grouped[:, :-2].reshape(H * D, *fused.shape[1:])
        k = grouped[:, -2].reshape(KV * D, *fused.shape[1:])
        v = grouped[:, -1].reshape(KV * D, *fused.shape[1:])
        return torch.cat([q, k, v])
    if KV == 1:
        return fused  # multi-query: already [q (H*D) | k (D) | v (D)]
    return split_interleaved_qkv(fused, H, D)


def convert(cfg: ModelConfig, ckpt: Checkpoint) -> Iterator[tuple[str, Tensor]]:
    C, V, I = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    qkv_rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    norms = ({"attn_norm": "ln_attn", "mlp_norm": "ln_mlp"} if cfg.variant == "new_decoder"
             else {"attn_norm": "input_layernorm"})
    yield "embed.weight", ckpt.get("transformer.word_embeddings.weight", (V, C))
    for i in range(cfg.num_layers):
        src, dst = f"transformer.h.{i}", f"blocks.{i}"
        params = [("attn.qkv", "self_attention.query_key_value", (qkv_rows, C), cfg.qkv_bias),
                  ("attn.out", "self_attention.dense", (C, C), cfg.bias),
                  ("mlp.up", "mlp.dense_h_to_4h", (I, C), cfg.bias),
                  ("mlp.down", "mlp.dense_4h_to_h", (C, I), cfg.bias)]
        for ours, theirs, shape, has_bias in params:
            kinds = [("weight", shape)] + ([("bias", shape[:1])] if has_bias else [])
            for kind, kind_shape in kinds:
                tensor = ckpt.get(f"{src}.{theirs}.{kind}", kind_shape)
                if ours == "attn.qkv":
                    tensor = _qkv_to_ours(cfg, tensor)
                yield f"{dst}.{ours}.{kind}", tensor
        for ours, theirs in norms.items():
            for kind in ("weight", "bias"):
                yield f"{dst}.{ours}.{kind}", ckpt.get(f"{src}.{theirs}.{kind}", (C,))
    for kind in ("weight", "bias"):
        yield f"final_norm.{kind}", ckpt.get(f"transformer.ln_f.{kind}", (C,))
    if not cfg.tie_embeddings:
        yield "lm_head.weight", ckpt.get("lm_head.weight", (V, C))

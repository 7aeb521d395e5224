"""BLOOM (bigscience/bloom-7b1). Reference: transformers `BloomForCausalLM`.

ALiBi instead of position embeddings, a LayerNorm right after the word embeddings, biases on
every linear, tanh-approximated GELU, tied embeddings. The fused query_key_value is interleaved
per head ([q_h, k_h, v_h] for each head).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from models.attention import Attention
from models.checkpoint import Checkpoint, HFConfig, split_interleaved_qkv
from models.config import ModelConfig
from models.layers import MLP, layer_norm
from models.transformer import Block, DecoderLM

MODEL_TYPES = ("bloom",)


def config_from_hf(hf: HFConfig, name: str) -> ModelConfig:
    hf.require("apply_residual_connection_post_layernorm", (False,), False)
    heads = hf.get("n_head", "num_attention_heads")
    hidden = hf.get("hidden_size", "n_embed")
    return ModelConfig(
        name, "bloom", hf.get("vocab_size"), hidden, hf.get("n_layer", "num_hidden_layers"),
        heads, heads, 4 * hidden, hf.get("seq_length", default=2048),
        hf.get("layer_norm_epsilon", kind=float),
        hf.get("tie_word_embeddings", kind=bool, default=True), qkv_bias=True, bias=True)


def build(cfg: ModelConfig) -> DecoderLM:
    C, eps = cfg.hidden_size, cfg.norm_eps
    blocks = [
        Block(Attention(C, cfg.num_heads, cfg.num_kv_heads, qkv_bias=True, out_bias=True),
              MLP(C, cfg.intermediate_size, bias=True, gelu="tanh"), layer_norm(C, eps),
              layer_norm(C, eps))
        for _ in range(cfg.num_layers)
    ]
    return DecoderLM(cfg, nn.Embedding(cfg.vocab_size, C), blocks, layer_norm(C, eps), None,
                     position="alibi", embed_norm=layer_norm(C, eps))


def convert(cfg: ModelConfig, ckpt: Checkpoint) -> Iterator[tuple[str, Tensor]]:
    C, V, I, H, D = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size, cfg.num_heads,
                     cfg.head_dim)
    # The published bigscience checkpoints store names without the "transformer." prefix
    # that save_pretrained adds; accept both.
    prefix = "transformer." if "transformer.word_embeddings.weight" in ckpt else ""

    def get_linear(name: str, shape: tuple[int, int]):
        return (ckpt.get(f"{prefix}{name}.weight", shape),
                ckpt.get(f"{prefix}{name}.bias", shape[:1]))

    def get_norm(name: str):
        return ckpt.get(f"{prefix}{name}.weight", (C,)), ckpt.get(f"{prefix}{name}.bias", (C,))

    yield "embed.weight", ckpt.get(f"{prefix}word_embeddings.weight", (V, C))
    yield from _pair("embed_norm", get_norm("word_embeddings_layernorm"))
    for i in range(cfg.num_layers):
        src, dst = f"h.{i}", f"blocks.{i}"
        qkv_w, qkv_b = get_linear(f"{src}.self_attention.query_key_value", (3 * C, C))
        yield from _pair(f"{dst}.attn.qkv", (split_interleaved_qkv(qkv_w, H, D),
                                             split_interleaved_qkv(qkv_b, H, D)))
        yield from _pair(f"{dst}.attn.out", get_linear(f"{src}.self_attention.dense", (C, C)))
        yield from _pair(f"{dst}.mlp.up", get_linear(f"{src}.mlp.dense_h_to_4h", (I, C)))
        yield from _pair(f"{dst}.mlp.down", get_linear(f"{src}.mlp.dense_4h_to_h", (C, I)))
        yield from _pair(f"{dst}.attn_norm", get_norm(f"{src}.input_layernorm"))
        yield from _pair(f"{dst}.mlp_norm", get_norm(f"{src}.post_attention_layernorm"))
    yield from _pair("final_norm", get_norm("ln_f"))


def _pair(name: str, weight_bias: tuple[Tensor, Tensor]) -> Iterator[tuple[str, Tensor]]:
    yield f"{name}.weight", weight_bias[0]
    yield f"{name}.bias", weight_bias[1]

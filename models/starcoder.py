"""StarCoder (bigcode/starcoder, GPTBigCode). Reference: transformers `GPTBigCodeForCausalLM`.

Multi-query attention, learned absolute positions, pre-norm LayerNorm blocks, biases on every
linear, tanh-approximated GELU, tied embeddings. With multi_query the fused c_attn is already
[q | k | v]; without it, it is interleaved per head.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from models.attention import Attention
from models.checkpoint import Checkpoint, HFConfig, split_interleaved_qkv
from models.config import ModelConfig
from models.layers import MLP, Linear, layer_norm
from models.transformer import Block, DecoderLM

MODEL_TYPES = ("gpt_bigcode",)


def config_from_hf(hf: HFConfig, name: str) -> ModelConfig:
    hf.require("activation_function", ("gelu_pytorch_tanh", "gelu_new"), "gelu_pytorch_tanh")
    hf.require("scale_attn_weights", (True,), True)
    heads = hf.get("n_head", "num_attention_heads")
    hidden = hf.get("n_embd", "hidden_size")
    multi_query = hf.get("multi_query", kind=bool, default=True)
    return ModelConfig(
        name, "starcoder", hf.get("vocab_size"), hidden, hf.get("n_layer", "num_hidden_layers"),
        heads, 1 if multi_query else heads, hf.get("n_inner", default=4 * hidden),
        hf.get("n_positions", "max_position_embeddings"),
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
    lm_head = None if cfg.tie_embeddings else Linear(C, cfg.vocab_size, False, split="column")
    return DecoderLM(cfg, nn.Embedding(cfg.vocab_size, C), blocks, layer_norm(C, eps), lm_head,
                     position="learned", pos_embed=nn.Embedding(cfg.max_positions, C))


def convert(cfg: ModelConfig, ckpt: Checkpoint) -> Iterator[tuple[str, Tensor]]:
    C, V, I, D = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size, cfg.head_dim
    qkv_rows = C + 2 * cfg.num_kv_heads * D
    yield "embed.weight", ckpt.get("transformer.wte.weight", (V, C))
    yield "pos_embed.weight", ckpt.get("transformer.wpe.weight", (cfg.max_positions, C))
    for i in range(cfg.num_layers):
        src, dst = f"transformer.h.{i}", f"blocks.{i}"
        params = [("attn.qkv", "attn.c_attn", (qkv_rows, C)), ("attn.out", "attn.c_proj", (C, C)),
                  ("mlp.up", "mlp.c_fc", (I, C)), ("mlp.down", "mlp.c_proj", (C, I)),
                  ("attn_norm", "ln_1", (C,)), ("mlp_norm", "ln_2", (C,))]
        for ours, theirs, shape in params:
            for kind, kind_shape in (("weight", shape), ("bias", shape[:1])):
                tensor = ckpt.get(f"{src}.{theirs}.{kind}", kind_shape)
                if ours == "attn.qkv" and cfg.num_kv_heads != 1:
                    tensor = split_interleaved_qkv(tensor, cfg.num_heads, D)
                yield f"{dst}.{ours}.{kind}", tensor
    for kind in ("weight", "bias"):
        yield f"final_norm.{kind}", ckpt.get(f"transformer.ln_f.{kind}", (C,))
    if not cfg.tie_embeddings:
        yield "lm_head.weight", ckpt.get("lm_head.weight", (V, C))

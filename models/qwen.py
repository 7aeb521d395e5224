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


def config_to_hf(cfg: ModelConfig) -> dict:
    if cfg.variant == "qwen2":
        return {**llama.config_to_hf(cfg), "model_type": "qwen2",
                "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": False}
    return dict(model_type="qwen", architectures=["QWenLMHeadModel"],
                vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                kv_channels=cfg.head_dim, intermediate_size=2 * cfg.intermediate_size,
                seq_length=cfg.max_positions, max_position_embeddings=cfg.max_positions,
                layer_norm_epsilon=cfg.norm_eps, rotary_emb_base=cfg.rope_theta, rotary_pct=1.0,
                no_bias=True, tie_word_embeddings=cfg.tie_embeddings, use_dynamic_ntk=True,
                use_logn_attn=True)


def v1_names(num_layers: int) -> dict[str, str]:
    """Qwen2 (Llama-style) tensor name -> Qwen v1 name, for everything but q/k/v."""
    names = {"model.embed_tokens.weight": "transformer.wte.weight",
             "model.norm.weight": "transformer.ln_f.weight", "lm_head.weight": "lm_head.weight"}
    for i in range(num_layers):
        src, dst = f"model.layers.{i}", f"transformer.h.{i}"
        names.update({
            f"{src}.self_attn.o_proj.weight": f"{dst}.attn.c_proj.weight",
            f"{src}.mlp.gate_proj.weight": f"{dst}.mlp.w2.weight",
            f"{src}.mlp.up_proj.weight": f"{dst}.mlp.w1.weight",
            f"{src}.mlp.down_proj.weight": f"{dst}.mlp.c_proj.weight",
            f"{src}.input_layernorm.weight": f"{dst}.ln_1.weight",
            f"{src}.post_attention_layernorm.weight": f"{dst}.ln_2.weight",
        })
    return names


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


def v1_to_qwen2(cfg: ModelConfig, ckpt: Checkpoint,
                shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """A v1 checkpoint under `Qwen2ForCausalLM` names: the tensors of `shapes`, which are the
    names and shapes of a Qwen2 state dict (this is how the reference reads v1)."""
    to_v1 = v1_names(cfg.num_layers)
    state = {}
    for name, shape in shapes.items():
        if name in to_v1:
            state[name] = ckpt.get(to_v1[name], shape)
            continue
        # model.layers.N.self_attn.{q,k,v}_proj.{weight,bias}: one third of c_attn
        _, _, layer, _, proj, kind = name.split(".")
        fused = ckpt.get(f"transformer.h.{layer}.attn.c_attn.{kind}", (3 * shape[0], *shape[1:]))
        state[name] = fused.split(shape[0])["qkv".index(proj[0])]
    return state


def qwen2_to_v1(cfg: ModelConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A `Qwen2ForCausalLM` state dict in the v1 layout (how tiny Qwen checkpoints are written)."""
    out = {v1: state[qwen2] for qwen2, v1 in v1_names(cfg.num_layers).items() if qwen2 in state}
    for i in range(cfg.num_layers):
        for kind in ("weight", "bias"):
            out[f"transformer.h.{i}.attn.c_attn.{kind}"] = torch.cat(
                [state[f"model.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"])
    return out

"""Our model configurations and the Qwen v1 layout in transformers' terms.

Only the transformers reference (`harness.reference`) and the tiny-checkpoint generation
(`harness.checkpoints`) need these: the engine reads checkpoints (`config_from_hf`, `convert`
in each family file) but never writes them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.checkpoint import Checkpoint
from models.config import ModelConfig


def config_to_hf(cfg: ModelConfig) -> dict:
    """The config.json fields of a HuggingFace checkpoint of this structure."""
    return _TO_HF[cfg.family](cfg)


def _llama(cfg: ModelConfig) -> dict:
    return dict(model_type="llama", architectures=["LlamaForCausalLM"],
                vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                num_key_value_heads=cfg.num_kv_heads, intermediate_size=cfg.intermediate_size,
                max_position_embeddings=cfg.max_positions, rms_norm_eps=cfg.norm_eps,
                tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu",
                rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})


def _qwen(cfg: ModelConfig) -> dict:
    if cfg.variant == "qwen2":
        return {**_llama(cfg), "model_type": "qwen2",
                "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": False}
    return dict(model_type="qwen", architectures=["QWenLMHeadModel"],
                vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                kv_channels=cfg.head_dim, intermediate_size=2 * cfg.intermediate_size,
                seq_length=cfg.max_positions, max_position_embeddings=cfg.max_positions,
                layer_norm_epsilon=cfg.norm_eps, rotary_emb_base=cfg.rope_theta, rotary_pct=1.0,
                no_bias=True, tie_word_embeddings=cfg.tie_embeddings, use_dynamic_ntk=True,
                use_logn_attn=True)


def _falcon(cfg: ModelConfig) -> dict:
    new_decoder = cfg.variant == "new_decoder"
    return dict(model_type="falcon", architectures=["FalconForCausalLM"],
                vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                num_kv_heads=cfg.num_kv_heads, multi_query=cfg.num_kv_heads == 1,
                new_decoder_architecture=new_decoder,
                num_ln_in_parallel_attn=2 if new_decoder else None,
                ffn_hidden_size=cfg.intermediate_size, max_position_embeddings=cfg.max_positions,
                layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
                bias=cfg.bias, parallel_attn=True, alibi=False, activation="gelu",
                rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})


def _bloom(cfg: ModelConfig) -> dict:
    return dict(model_type="bloom", architectures=["BloomForCausalLM"],
                vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, n_layer=cfg.num_layers,
                n_head=cfg.num_heads, seq_length=cfg.max_positions,
                layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
                apply_residual_connection_post_layernorm=False)


def _starcoder(cfg: ModelConfig) -> dict:
    return dict(model_type="gpt_bigcode", architectures=["GPTBigCodeForCausalLM"],
                vocab_size=cfg.vocab_size, n_embd=cfg.hidden_size, n_layer=cfg.num_layers,
                n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
                n_positions=cfg.max_positions, layer_norm_epsilon=cfg.norm_eps,
                multi_query=cfg.num_kv_heads == 1, tie_word_embeddings=cfg.tie_embeddings,
                activation_function="gelu_pytorch_tanh", scale_attn_weights=True)


_TO_HF = {"llama": _llama, "qwen": _qwen, "falcon": _falcon, "bloom": _bloom,
          "starcoder": _starcoder}


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

"""Model configurations: one frozen dataclass, one registry of exact names.

Real configs mirror the published HuggingFace `config.json` of each model. Tiny variants keep
every structural feature of their real model (head ratio, biases, tied embeddings, position
scheme, checkpoint layout) at a size that runs in milliseconds on a CPU. Tiny models share the
SmolLM2 tokenizer, so their vocabulary is SmolLM2's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

FAMILIES = ("llama", "qwen", "falcon", "bloom", "starcoder")
# The family of a model registered from a directory whose architecture the engine does not
# implement: only transformers runs it (the hf port and the reference).
TRANSFORMERS_ONLY = "transformers"


@dataclass(frozen=True)
class ModelConfig:
    """Structure of one decoder-only model; the family file says how to wire it.

    `variant` names a family-specific layout: qwen "v1" (QWenLMHeadModel names) or "qwen2";
    falcon "" (Falcon-7B: one shared LayerNorm, multi-query) or "new_decoder" (two
    LayerNorms, grouped-query).
    """

    name: str
    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_positions: int
    norm_eps: float
    tie_embeddings: bool
    rope_theta: float | None = None  # None: the family does not use rotary embeddings
    qkv_bias: bool = False
    bias: bool = False  # every other linear layer
    variant: str = ""

    def __post_init__(self):
        if self.family not in (*FAMILIES, TRANSFORMERS_ONLY):
            raise ValueError(f"model {self.name!r}: family {self.family!r} is not one of "
                             f"{FAMILIES}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model {self.name!r}: hidden_size {self.hidden_size} is not a "
                             f"multiple of num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model {self.name!r}: num_heads {self.num_heads} is not a multiple "
                             f"of num_kv_heads {self.num_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Tiny sizes: 4 heads of 16, 2 layers; vocabulary of the shared SmolLM2 tokenizer.
_TINY = dict(vocab_size=49152, hidden_size=64, num_layers=2, max_positions=512)

REGISTRY: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        # tiiuae/falcon-7b: multi-query, parallel attention + MLP under one LayerNorm, tied.
        ModelConfig("falcon-7b", "falcon", 65024, 4544, 32, 71, 1, 18176, 2048, 1e-5, True,
                    rope_theta=10000.0),
        ModelConfig("falcon-tiny", "falcon", num_heads=4, num_kv_heads=1, intermediate_size=256,
                    norm_eps=1e-5, tie_embeddings=True, rope_theta=10000.0, **_TINY),
        # bigscience/bloom-7b1: ALiBi, embedding LayerNorm, biases everywhere, tied.
        ModelConfig("bloom-7b1", "bloom", 250880, 4096, 30, 32, 32, 16384, 2048, 1e-5, True,
                    qkv_bias=True, bias=True),
        ModelConfig("bloom-tiny", "bloom", num_heads=4, num_kv_heads=4, intermediate_size=256,
                    norm_eps=1e-5, tie_embeddings=True, qkv_bias=True, bias=True, **_TINY),
        # hfl/chinese-alpaca-2-7b: Llama-2 with a 55296-token vocabulary.
        ModelConfig("alpaca2-7b", "llama", 55296, 4096, 32, 32, 32, 11008, 4096, 1e-5, False,
                    rope_theta=10000.0),
        ModelConfig("alpaca2-tiny", "llama", num_heads=4, num_kv_heads=4, intermediate_size=172,
                    norm_eps=1e-5, tie_embeddings=False, rope_theta=10000.0, **_TINY),
        # HuggingFaceTB/SmolLM2-135M-Instruct: Llama with GQA 9/3, tied.
        ModelConfig("smollm2-135m", "llama", 49152, 576, 30, 9, 3, 1536, 8192, 1e-5, True,
                    rope_theta=100000.0),
        # Qwen/Qwen-7B: v1 layout, fused c_attn with bias, untied.
        ModelConfig("qwen-7b", "qwen", 151936, 4096, 32, 32, 32, 11008, 8192, 1e-6, False,
                    rope_theta=10000.0, qkv_bias=True, variant="v1"),
        ModelConfig("qwen-tiny", "qwen", num_heads=4, num_kv_heads=4, intermediate_size=172,
                    norm_eps=1e-6, tie_embeddings=False, rope_theta=10000.0, qkv_bias=True,
                    variant="v1", **_TINY),
        # bigcode/starcoder: GPTBigCode multi-query, learned positions, biases, tied.
        ModelConfig("starcoder-15b", "starcoder", 49152, 6144, 40, 48, 1, 24576, 8192, 1e-5, True,
                    qkv_bias=True, bias=True),
        ModelConfig("starcoder-tiny", "starcoder", num_heads=4, num_kv_heads=1,
                    intermediate_size=256, norm_eps=1e-5, tie_embeddings=True, qkv_bias=True,
                    bias=True, **_TINY),
    ]
}

TINY_MODELS = tuple(n for n in REGISTRY if n.endswith("-tiny"))
# Models whose weights llmgate can produce itself (the rest need --model-path).
EMBEDDED_MODELS = TINY_MODELS + ("smollm2-135m",)


def register(cfg: ModelConfig) -> ModelConfig:
    """Add a model read from a checkpoint's config.json (`--model-path NAME=DIR` with a NAME
    the registry does not list); a registered name keeps its config."""
    known = REGISTRY.setdefault(cfg.name, cfg)
    if known != cfg:
        raise ValueError(f"model {cfg.name!r} is registered with another structure")
    return known


def get_config(name: str) -> ModelConfig:
    """The registered config for an exact model name."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(REGISTRY)}") from None

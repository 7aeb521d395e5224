import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.hf_layout import config_to_hf
from models.checkpoint import HFConfig
from models.config import REGISTRY, TINY_MODELS, ModelConfig, get_config
from models.loading import model_config


def test_unknown_model_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'qwen-8b'; valid names: .*qwen-7b"):
        get_config("qwen-8b")


def test_model_names_are_distinct_tokens_for_k_selection():
    # `-k NAME` must select exactly that model: no name is a dash-prefix of another.
    for a in REGISTRY:
        for b in REGISTRY:
            assert a == b or not b.startswith(a + "-"), (a, b)


@pytest.mark.parametrize("tiny", TINY_MODELS)
def test_tiny_keeps_the_structure_of_its_real_model(tiny):
    real = {"falcon-tiny": "falcon-7b", "bloom-tiny": "bloom-7b1", "alpaca2-tiny": "alpaca2-7b",
            "qwen-tiny": "qwen-7b", "starcoder-tiny": "starcoder-15b"}[tiny]
    t, r = get_config(tiny), get_config(real)
    assert t.family == r.family and t.variant == r.variant
    assert t.tie_embeddings == r.tie_embeddings
    assert (t.qkv_bias, t.bias) == (r.qkv_bias, r.bias)
    assert (t.rope_theta is None) == (r.rope_theta is None)
    # multi-query stays multi-query, multi-head stays multi-head
    assert (t.num_kv_heads == 1) == (r.num_kv_heads == 1)
    assert (t.num_kv_heads == t.num_heads) == (r.num_kv_heads == r.num_heads)


def test_config_rejects_inconsistent_heads():
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads"):
        dataclasses.replace(get_config("alpaca2-tiny"), num_kv_heads=3)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registered_configs_round_trip_through_config_json(name, tmp_path):
    cfg = get_config(name)
    hf = config_to_hf(cfg)
    assert model_config(HFConfig(hf, tmp_path / "config.json"), name) == cfg


@st.composite
def configs(draw):
    base = get_config(draw(st.sampled_from(TINY_MODELS)))
    heads = draw(st.sampled_from([1, 2, 4, 8]))
    kv_heads = (1 if base.num_kv_heads == 1 else heads)
    if base.variant == "new_decoder":
        kv_heads = draw(st.sampled_from([k for k in (1, 2, 4) if heads % k == 0]))
    return dataclasses.replace(
        base, name="random", num_heads=heads, num_kv_heads=kv_heads,
        hidden_size=heads * draw(st.sampled_from([8, 16, 32])),
        num_layers=draw(st.integers(1, 6)), vocab_size=draw(st.integers(16, 70000)),
        intermediate_size=draw(st.integers(4, 512)),
        max_positions=draw(st.integers(16, 8192)),
        norm_eps=draw(st.sampled_from([1e-5, 1e-6, 3e-7])),
        tie_embeddings=draw(st.booleans()) if base.family != "bloom" else True,
        rope_theta=draw(st.sampled_from([10000.0, 500000.0])) if base.rope_theta else None)


@settings(max_examples=60, deadline=None)
@given(configs())
def test_config_round_trip_property(tmp_path_factory, cfg):
    if cfg.family == "bloom":  # BLOOM's MLP width is always 4 x hidden
        cfg = dataclasses.replace(cfg, intermediate_size=4 * cfg.hidden_size)
    hf = config_to_hf(cfg)
    assert model_config(HFConfig(hf, "config.json"), "random") == cfg


def test_falcon_new_decoder_round_trips():
    cfg = dataclasses.replace(get_config("falcon-tiny"), variant="new_decoder", num_kv_heads=2)
    hf = config_to_hf(cfg)
    assert model_config(HFConfig(hf, "config.json"), cfg.name) == cfg


def test_model_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_config("qwen-tiny").num_layers = 3  # type: ignore[misc]
    assert isinstance(get_config("qwen-tiny"), ModelConfig)

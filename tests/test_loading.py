"""Checkpoint layouts and family variants load to the same function as transformers."""

import dataclasses

import pytest
import torch

from harness.ports.engine import PortedRunner
from harness.reference_runner import ReferenceRunner
from models.config import get_config
from models.loading import load_model
from tests.conftest import tiny_checkpoint

LAYOUTS = ["safetensors", "safetensors-sharded", "bin-sharded"]


def compare_with_reference(path, atol=1e-4):
    ids = torch.randint(3, 49152, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    ours, ref = PortedRunner(path), ReferenceRunner(path)
    torch.testing.assert_close(ours.prefill(ids, mask), ref.prefill(ids, mask), atol=atol, rtol=0)
    for token in (7, 99, 1234):
        step = torch.tensor([token, token])
        torch.testing.assert_close(ours.decode(step), ref.decode(step), atol=atol, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_the_same_weights(make_tiny, layout):
    cfg = get_config("falcon-tiny")
    reference = load_model(make_tiny(cfg, "safetensors", name="base")).state_dict()
    loaded = load_model(make_tiny(cfg, layout)).state_dict()
    assert loaded.keys() == reference.keys()
    for name in reference:
        assert torch.equal(loaded[name], reference[name]), name


def test_bloom_loads_names_with_and_without_transformer_prefix(make_tiny):
    cfg = get_config("bloom-tiny")
    prefixed = load_model(make_tiny(cfg, "bin-sharded", name="a")).state_dict()
    bare = load_model(make_tiny(cfg, "bin-sharded-unprefixed", name="b")).state_dict()
    assert all(torch.equal(prefixed[n], bare[n]) for n in prefixed)


@pytest.mark.parametrize("name, changes", [
    ("falcon-tiny", dict(variant="new_decoder", num_kv_heads=2)),  # Falcon-40B style GQA
    ("falcon-tiny", dict(num_kv_heads=4)),  # multi-head Falcon: per-head interleaved qkv
    ("starcoder-tiny", dict(num_kv_heads=4)),  # GPTBigCode without multi_query
    ("qwen-tiny", dict(variant="qwen2", num_kv_heads=2)),  # Qwen2 layout with GQA
    ("alpaca2-tiny", dict(num_kv_heads=2, tie_embeddings=True)),
    ("bloom-tiny", dict(num_heads=8)),  # ALiBi slopes for a power-of-two head count
    ("bloom-tiny", dict(num_heads=2, num_kv_heads=2)),
])
def test_family_variants_match_transformers(make_tiny, name, changes):
    cfg = dataclasses.replace(get_config(name), **changes)
    if cfg.family == "bloom":
        cfg = dataclasses.replace(cfg, num_kv_heads=cfg.num_heads)
    compare_with_reference(make_tiny(cfg, "safetensors"))


def test_alibi_slopes_for_non_power_of_two_heads(make_tiny):
    cfg = dataclasses.replace(get_config("bloom-tiny"), num_heads=8, num_kv_heads=8,
                              hidden_size=96)  # 8 heads of 12; slopes differ from 6 heads
    compare_with_reference(make_tiny(cfg, "safetensors"))
    cfg6 = dataclasses.replace(cfg, num_heads=6, num_kv_heads=6)
    compare_with_reference(make_tiny(cfg6, "safetensors", name="six"))


def test_qwen_v1_checkpoint_uses_v1_names(make_tiny):
    path = make_tiny(get_config("qwen-tiny"), "safetensors-sharded")
    import json
    names = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    assert "transformer.h.0.attn.c_attn.weight" in names
    assert "transformer.h.1.mlp.w2.weight" in names
    assert not any(n.startswith("model.") for n in names)
    assert json.loads((path / "config.json").read_text())["architectures"] == ["QWenLMHeadModel"]
    compare_with_reference(path)


def test_model_is_materialised_in_the_requested_dtype(make_tiny):
    path = make_tiny(get_config("starcoder-tiny"))
    model = load_model(path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())


def test_single_pytorch_model_bin_loads(make_tiny, tmp_path):
    from safetensors.torch import load_file

    path = make_tiny(get_config("starcoder-tiny"))
    expected = load_model(path).state_dict()
    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin")
    loaded = load_model(path).state_dict()
    assert all(torch.equal(loaded[n], expected[n]) for n in expected)


def test_legacy_non_zip_bin_loads(make_tiny):
    from safetensors.torch import load_file

    path = make_tiny(get_config("falcon-tiny"))
    expected = load_model(path).state_dict()
    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    loaded = load_model(path).state_dict()
    assert all(torch.equal(loaded[n], expected[n]) for n in expected)


BUILD_PEAK = """
import gc, json, sys
from pathlib import Path
from harness.pool import release_memory
from models.loading import build_model
from models.precision import Precision

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024

warm, path, dtype = sys.argv[1:]
build_model(warm, Precision.of(dtype, "cpu"))  # imports and first-call allocations
gc.collect()
release_memory()
Path("/proc/self/clear_refs").write_text("5")
base = status("VmRSS:")
model = build_model(path, Precision.of(dtype, "cpu"))
weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
print(json.dumps({"above": status("VmHWM:") - base, "weights": weights}))
"""


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_model_builds_holding_little_more_than_its_weights(dtype):
    # build_model's peak host RSS above what imports leave is at most 1.25x the weights it
    # ends with: a checkpoint is neither held whole in float32 to be cast, nor its file's
    # pages kept mapped beside the model (what grows with a 7B model is the weights).
    import json
    import subprocess
    import sys

    from harness.checkpoints import embedded_checkpoint

    path = embedded_checkpoint("smollm2-135m")
    done = subprocess.run([sys.executable, "-c", BUILD_PEAK, str(tiny_checkpoint("qwen-tiny")),
                           str(path), dtype], capture_output=True, text=True, check=True)
    found = json.loads(done.stdout)
    assert found["above"] <= 1.25 * found["weights"], found

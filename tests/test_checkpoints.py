"""The embedded checkpoint cache: deterministic, complete, rebuilt when damaged."""

import pytest
from safetensors.torch import load_file

from harness.checkpoints import CACHE_VERSION, MANIFEST, embedded_checkpoint
from tests.conftest import tiny_checkpoint


@pytest.fixture
def cache(tmp_path):
    """A fresh cache that borrows the converted SmolLM2 (the tokenizer source)."""
    smollm2 = tiny_checkpoint("smollm2-135m")
    (tmp_path / smollm2.name).symlink_to(smollm2)
    return tmp_path


def test_tiny_checkpoints_are_deterministic(cache):
    built = embedded_checkpoint("falcon-tiny", cache)
    assert built == cache / f"falcon-tiny-v{CACHE_VERSION}"
    assert {"config.json", "model.safetensors", "tokenizer.json", MANIFEST} <= {
        f.name for f in built.iterdir()}
    ours, shared = load_file(built / "model.safetensors"), load_file(
        tiny_checkpoint("falcon-tiny") / "model.safetensors")
    assert ours.keys() == shared.keys()
    assert all((ours[k] == shared[k]).all() for k in ours)


@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest"])
def test_damaged_entries_are_rebuilt(cache, damage):
    path = embedded_checkpoint("falcon-tiny", cache)
    weights = path / "model.safetensors"
    good = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(good[: len(good) // 3])
    elif damage == "delete":
        weights.unlink()
    else:
        (path / MANIFEST).unlink()  # an interrupted build never wrote it
    assert embedded_checkpoint("falcon-tiny", cache) == path
    assert weights.read_bytes() == good


def test_models_without_embedded_weights_need_a_path(cache):
    with pytest.raises(ValueError, match="'qwen-7b' has no embedded weights; pass --model-path"):
        embedded_checkpoint("qwen-7b", cache)

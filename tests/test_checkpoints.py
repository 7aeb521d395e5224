"""The embedded checkpoint cache: deterministic, complete, rebuilt when damaged."""

from fnmatch import fnmatch

import pytest
from safetensors.torch import load_file

from harness.checkpoints import CACHE_VERSION, MANIFEST, embedded_checkpoint, ensure_checkpoint
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


SHARD = "model-00001-of-00002.safetensors"


@pytest.mark.parametrize("damage, why", [
    ("truncate", f"{SHARD} has * bytes, expected *"),
    ("delete", f"{SHARD} is missing"),
    ("manifest", f"no {MANIFEST} (an interrupted build)"),
    ("header", f"{SHARD} does not match its SHA-256 digest"),
    ("weights", f"{SHARD} does not match its SHA-256 digest"),
])
def test_damaged_entries_are_rebuilt_and_say_why(cache, damage, why):
    path, status = ensure_checkpoint("starcoder-tiny", cache)
    assert status == "built"
    weights = path / SHARD  # a shard: its header is not parsed when the entry is opened
    good = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(good[: len(good) // 3])
    elif damage == "delete":
        weights.unlink()
    elif damage == "manifest":
        (path / MANIFEST).unlink()  # an interrupted build never wrote it
    else:  # same size, different bytes: in the header or in a tensor
        at = 10 if damage == "header" else len(good) - 10
        weights.write_bytes(good[:at] + bytes(b ^ 0xFF for b in good[at:at + 4]) + good[at + 4:])
    with pytest.warns(UserWarning, match="cache entry rebuilt: ") as warned:
        again, status = ensure_checkpoint("starcoder-tiny", cache)
    assert again == path and status.startswith("rebuilt: ")
    assert fnmatch(status, f"rebuilt: {why}"), status
    assert str(warned[0].message).endswith(status.removeprefix("rebuilt: "))
    assert weights.read_bytes() == good
    assert ensure_checkpoint("starcoder-tiny", cache) == (path, "verified")


def test_models_without_embedded_weights_need_a_path(cache):
    with pytest.raises(ValueError, match="'qwen-7b' has no embedded weights; pass --model-path"):
        embedded_checkpoint("qwen-7b", cache)

"""Shared fixtures for llmgate's own tests."""

import json
import shutil
from functools import cache
from pathlib import Path

import pytest
import torch._dynamo  # noqa: F401  (see below)
import transformers.modeling_utils  # noqa: F401  (see below)

from harness.checkpoints import default_cache_dir, embedded_checkpoint
from models.loading import load_model

# torch._dynamo registers operator libraries once per process. pytester drops every module
# imported during a test when the test ends, so a second import would register them again and
# fail: importing it above, before any test, keeps it loaded. Likewise transformers'
# modeling_utils, which imports the `kernels` package: imported anew, its enums no longer
# compare equal to the ones transformers kept (`'Mode' and 'Mode'` in from_pretrained).


ROOT = Path(__file__).resolve().parent.parent
CACHE = default_cache_dir()  # read before pytester points HOME at its own directory
REMOTE_CODE = ROOT / "tests" / "remote_code" / "modeling_tinyllama.py"
REMOTE_CLASS = "modeling_tinyllama.TinyLlamaForCausalLM"


def remote_code_checkpoint(out: Path) -> Path:
    """alpaca2-tiny's weights in `out` beside a modeling file that config.json's auto_map
    names: a HuggingFace remote-code port in miniature."""
    shutil.copytree(tiny_checkpoint("alpaca2-tiny"), out)
    shutil.copy(REMOTE_CODE, out)
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": REMOTE_CLASS}
    (out / "config.json").write_text(json.dumps(config))
    return out


@cache
def tiny_checkpoint(name: str):
    return embedded_checkpoint(name)


@cache
def tiny_model(name: str):
    return load_model(tiny_checkpoint(name))


@pytest.fixture
def make_tiny(tmp_path):
    """Write a tiny checkpoint of a registered config in a given on-disk layout."""
    from harness.checkpoints import write_tiny_checkpoint

    def _make(cfg, layout="safetensors", name="ckpt"):
        out = tmp_path / name
        out.mkdir()
        write_tiny_checkpoint(cfg, out, layout)
        return out
    return _make


@pytest.fixture
def suites(pytester, monkeypatch):
    """A pytester directory with the project's conftest and a copy of suites/ (as
    `copied_suites`: this session may have imported the real suites already). Modules that
    use it declare `pytest_plugins = ["pytester"]`."""
    monkeypatch.setenv("LLMGATE_CACHE", str(CACHE))
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    shutil.copytree(ROOT / "suites", pytester.path / "copied_suites",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return pytester

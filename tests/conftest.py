"""Shared fixtures for llmgate's own tests."""

from functools import cache

import pytest
import torch._dynamo  # noqa: F401  (see below)

from harness.checkpoints import embedded_checkpoint
from models.loading import load_model

# torch._dynamo registers operator libraries once per process. pytester drops every module
# imported during a test when the test ends, so a second import would register them again and
# fail: importing it above, before any test, keeps it loaded.


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

"""Shared fixtures for llmgate's own tests."""

from functools import cache

import pytest

from harness.checkpoints import embedded_checkpoint
from models.loading import load_model


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

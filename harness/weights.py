"""Where each model's weights are, resolved once per process: --model-path, else the
embedded checkpoint built (or verified) in the cache; a model with neither skips its case
with a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.checkpoints import Weights, embedded_checkpoint, weights_layout
from models.config import EMBEDDED_MODELS


class WeightResolver:
    def __init__(self, model_paths: dict[str, Path], cache_dir: Path):
        self.model_paths, self.cache_dir = model_paths, cache_dir
        self._resolved: dict[str, Path] = {}
        self._layouts: dict[str, Weights] = {}

    def checkpoint(self, model: str) -> Path:
        """The model's weights directory (an embedded one is built first if needed)."""
        if model not in self._resolved:
            if model in self.model_paths:
                self._resolved[model] = self.model_paths[model]
            elif model not in EMBEDDED_MODELS:
                pytest.skip(f"{model}: no weights; pass --model-path {model}=/path/to/checkpoint")
            else:
                self._resolved[model] = embedded_checkpoint(model, self.cache_dir)
        return self._resolved[model]

    def weights(self, model: str) -> Weights:
        """The model's weights and where its tokenizer and float source are."""
        if model not in self._layouts:
            self._layouts[model] = weights_layout(self.checkpoint(model))
        return self._layouts[model]

    def port_path(self, model: str) -> Path:
        """The HuggingFace directory an hf or plug-in port loads: --model-path, else the
        float checkpoint the embedded weights are built from."""
        if model in self.model_paths:
            return self.model_paths[model]
        return self.weights(model).source

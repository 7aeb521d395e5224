"""Start-up checks of what an hf or plug-in port will load, read from configs and weight
headers only: remote code only with --trust-remote-code, and directories transformers can
build whose weight files are whole."""

from __future__ import annotations

import pytest

from harness.port_checks import port_option
from harness.ports.hf import check_hf_directory, check_remote_code, enter_rank
from harness.settings import Settings
from harness.weights import WeightResolver
from models.checkpoint import Checkpoint, CheckpointError
from models.config import EMBEDDED_MODELS


def check_port_directories(settings: Settings, weights: WeightResolver,
                           models: list[str]) -> None:
    """What an hf or plug-in port loads, checked before any case: remote code only with
    --trust-remote-code; for hf, each directory (each rank's under --tp, an embedded
    checkpoint too) one transformers can build and whose weight files are whole. Reads
    configs and weight headers only."""
    ports, paths, tp = settings.ports, settings.model_paths, settings.tp
    for model in dict.fromkeys(models):
        hf = next((s for s in ports.of(model) if s.kind == "hf"), None)
        plugin = any(s.kind == "plugin" for s in ports.of(model))
        if not (hf and (model in paths or model in EMBEDDED_MODELS) or plugin and model in paths):
            continue  # nothing to check (a model without weights skips with a hint)
        given = (f"--model-path {model}" if model in paths else
                 f"{port_option(model if model in ports.per_model else None, hf)} ({model}'s "
                 "embedded checkpoint)")
        try:
            path = weights.port_path(model)
            if hf and tp > 1:  # each rank loads its own directory
                for rank in range(tp):
                    check_hf_directory(enter_rank(path, rank, tp, 0, environ={}),
                                       ports.trust_remote_code)
            elif hf:
                check_hf_directory(path, ports.trust_remote_code)
            else:  # a plug-in loads it its own way; the transformers reference reads it too
                check_remote_code(path, ports.trust_remote_code)
                checkpoint = Checkpoint(path)
                checkpoint.open_all()
                checkpoint.close()
        except CheckpointError as e:
            raise pytest.UsageError(f"{given}: {e}") from None

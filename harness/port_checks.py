"""Start-up checks of the ports a run is given (`--port`): what each kind runs, and what an hf
or plug-in port will load, read from configs and weight headers only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.devices import QUANTIZED
from harness.ports.hf import check_hf_directory, check_remote_code, enter_rank
from harness.ports.options import PortSettings, PortSpec
from models.checkpoint import Checkpoint, CheckpointError
from models.config import EMBEDDED_MODELS

if TYPE_CHECKING:
    from harness.settings import Settings


def port_option(name: str | None, spec: PortSpec) -> str:
    """The --port option as given, for messages."""
    return f"--port {name + '=' if name else ''}{spec.given}"


def check_ports(ports: PortSettings, dtypes: list[str], tp: int) -> None:
    """An hf port runs float dtypes; the engine and hf ports split over --tp ranks."""
    for name, spec in [*((None, s) for s in ports.default),
                       *((n, s) for n, specs in ports.per_model.items() for s in specs)]:
        what = port_option(name, spec)
        if spec.kind == "hf" and set(dtypes) & set(QUANTIZED):
            raise pytest.UsageError(f"{what}: {hf_int8_refusal(dtypes)}")
        if spec.kind not in ("engine", "hf") and tp > 1:
            raise pytest.UsageError(f"{what}: --tp {tp} runs the engine or an hf port's "
                                    "part_model/{rank} directories")


def hf_int8_refusal(dtypes: list[str]) -> str:
    """Why an hf port does not run these int8 `dtypes` (it loads the float weights)."""
    return (f"an hf port runs fp32, bf16 or fp16, not "
            f"{','.join(d for d in dtypes if d in QUANTIZED)}")


def check_selected(option: str, name: str, selected: list[str], default: bool = False) -> None:
    """A per-model option for a model the run does not select would be silently ignored.
    default: `selected` is the embedded models (no --model, no --model-path)."""
    if name not in selected:
        raise pytest.UsageError(f"{option} is given but --model does not select {name}"
                                f"{' (default: the embedded models)' if default else ''}; "
                                f"add --model {name}")


def check_port_directories(settings: Settings) -> None:
    """What an hf or plug-in port loads, checked before any case: remote code only with
    --trust-remote-code; for hf, each directory (each rank's under --tp, an embedded
    checkpoint too) one transformers can build and whose weight files are whole. Reads
    configs and weight headers only."""
    ports, paths, tp = settings.ports, settings.model_paths, settings.tp
    for model in dict.fromkeys([*settings.models, *settings.perf_models]):
        hf = next((s for s in ports.of(model) if s.kind == "hf"), None)
        plugin = any(s.kind == "plugin" for s in ports.of(model))
        if not (hf and (model in paths or model in EMBEDDED_MODELS) or plugin and model in paths):
            continue  # nothing to check (a model without weights skips with a hint)
        given = (f"--model-path {model}" if model in paths else
                 f"{port_option(model if model in ports.per_model else None, hf)} ({model}'s "
                 "embedded checkpoint)")
        try:
            path = settings.port_path(model)
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


def check_cloze_ports(tasks: list[str], ports: PortSettings) -> None:
    """Cloze scoring needs each continuation token's log-probability; a server lists the
    next token's top-K only."""
    cloze = [t for t in tasks if t.endswith("-cloze")]
    served = next((s for s in ports.specs() if s.served), None)
    if cloze and served:
        raise pytest.UsageError(f"--task {cloze[0]}: a served port ({served.given}) gives no "
                                "log-probability of each continuation token; cloze tasks run "
                                "on the engine, hf and plug-in ports (letter form: --task "
                                f"{cloze[0].removesuffix('-cloze')})")

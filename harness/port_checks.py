"""Start-up checks of the ports a run is given (`--port`): what each kind runs and which
models they name (what they load: `harness.port_directories`)."""

from __future__ import annotations

import pytest

from harness.devices import QUANTIZED
from harness.ports.options import PortSettings, PortSpec


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

"""A case's peak memory: the host's resident set and, on cuda/npu, the device allocator's,
from the case's start (the plugin starts and reads it around each case test)."""

from __future__ import annotations

from harness.devices import _DISCARDED_PEAKS, BACKENDS, Backend, CpuBackend, get_backend


def start_case_peaks(hardware: str) -> None:
    """Start counting a case's peak memory: the host's, and the case's device's where it is
    usable (reading it elsewhere would import torch_npu or initialise CUDA)."""
    for backend in _peak_backends(hardware):
        backend._reset_peak()
        _DISCARDED_PEAKS[backend.name] = 0


def case_peaks(hardware: str) -> dict[str, int]:
    """The case's peak host RSS (`peak_host_bytes`) and device allocation
    (`peak_device_bytes`, cuda/npu) since `start_case_peaks`."""
    peaks = {}
    for backend in _peak_backends(hardware):
        key = "peak_host_bytes" if backend.name == "cpu" else "peak_device_bytes"
        peaks[key] = max(_DISCARDED_PEAKS.get(backend.name, 0), backend.peak_memory_bytes())
    return peaks


def _peak_backends(hardware: str) -> list[Backend]:
    backends = [CpuBackend()]
    if hardware in BACKENDS and hardware != "cpu":
        device = get_backend(hardware)
        if device.available:
            backends.append(device)
    return backends

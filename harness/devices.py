"""Device backends: cpu, cuda, npu.

Each backend says whether it is usable here and why not, synchronises, times a region (device
events on cuda/npu, `perf_counter` on cpu), reports peak memory (allocator statistics on
cuda/npu, process peak RSS on cpu) and lists the dtypes it runs. `torch_npu` is imported only
when the npu backend is first asked for: on a machine without Ascend's CANN libraries importing
it fails, and merely installing it there breaks `import torch` unless
TORCH_DEVICE_BACKEND_AUTOLOAD=0 is set.
"""

from __future__ import annotations

import importlib
import os
import platform
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import psutil
import torch

from models.precision import ALL_DTYPES, QUANTIZED


@dataclass
class Timing:
    """Filled in when a `Backend.timer()` block ends."""

    ms: float = field(default=float("nan"))


class Backend:
    name = ""

    def availability(self) -> tuple[bool, str]:
        """(usable, reason when not)."""
        raise NotImplementedError

    @property
    def available(self) -> bool:
        return self.availability()[0]

    def torch_device(self) -> torch.device:
        return torch.device(self.name)

    def device_name(self) -> str:
        """The device model, e.g. 'NVIDIA A100-SXM4-80GB' or 'Ascend910B3': what a stored
        baseline must match to count as the same hardware."""
        raise NotImplementedError

    def free_memory_bytes(self) -> int:
        raise NotImplementedError

    def dtypes(self) -> tuple[str, ...]:
        return ALL_DTYPES

    def synchronize(self) -> None:
        pass

    def pin_fp32(self) -> dict:
        """Make fp32 arithmetic fp32 on this device for the rest of the process; returns the
        settings in force that decide it (run.json and `llmgate devices` show them)."""
        torch.set_float32_matmul_precision("highest")  # oneDNN may otherwise use bf16
        return {"float32_matmul_precision": torch.get_float32_matmul_precision()}

    def fp32_problem(self, settings: dict) -> str:
        """Why fp32 is not computed in fp32 under `settings` ("" where it is)."""
        return ""

    @contextmanager
    def timer(self) -> Iterator[Timing]:
        """Wall time of the block after the device has finished its work."""
        timing = Timing()
        self.synchronize()
        start = time.perf_counter()
        yield timing
        self.synchronize()
        timing.ms = (time.perf_counter() - start) * 1e3

    def copy_bandwidth(self, nbytes: int = 512 * 2**20, repeats: int = 10) -> float:
        """Memory bandwidth in bytes/s: best of `repeats` copies of an `nbytes` buffer,
        counting bytes read plus bytes written (the STREAM convention)."""
        src = torch.ones(nbytes // 4, dtype=torch.float32, device=self.torch_device())
        dst = torch.empty_like(src)
        dst.copy_(src)
        best = float("inf")
        for _ in range(repeats):
            with self.timer() as t:
                dst.copy_(src)
            best = min(best, t.ms)
        return 2 * nbytes / (best / 1e3)

    def reset_peak_memory(self) -> None:
        """Start a new peak; the one it ends is kept for the case peak (`harness.peaks`)."""
        _DISCARDED_PEAKS[self.name] = max(_DISCARDED_PEAKS.get(self.name, 0),
                                          self.peak_memory_bytes())
        self._reset_peak()

    def _reset_peak(self) -> None:
        raise NotImplementedError

    def peak_memory_bytes(self) -> int:
        raise NotImplementedError


# Per backend, the highest peak a reset ended since the case began: a perf case resets the
# peak to measure its own loop, and the case's peak (its model's load) must survive that.
_DISCARDED_PEAKS: dict[str, int] = {}


class CpuBackend(Backend):
    """Peak memory is the process's peak resident set (VmHWM), reset through clear_refs."""

    name = "cpu"

    def availability(self) -> tuple[bool, str]:
        return True, ""

    def device_name(self) -> str:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()

    def free_memory_bytes(self) -> int:
        return psutil.virtual_memory().available

    def _reset_peak(self) -> None:
        try:  # Linux >= 4.0: writing 5 resets the peak RSS to the current RSS.
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass  # peak then counts from process start

    def peak_memory_bytes(self) -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _AcceleratorBackend(Backend):
    """cuda and npu share torch's device API: torch.<name>.Event, memory statistics."""

    def module(self):
        return getattr(torch, self.name)

    def synchronize(self) -> None:
        self.module().synchronize()

    @contextmanager
    def timer(self) -> Iterator[Timing]:
        timing = Timing()
        start = self.module().Event(enable_timing=True)
        end = self.module().Event(enable_timing=True)
        start.record()
        yield timing
        end.record()
        end.synchronize()
        timing.ms = start.elapsed_time(end)

    def _reset_peak(self) -> None:
        self.module().reset_peak_memory_stats()

    def peak_memory_bytes(self) -> int:
        return int(self.module().max_memory_allocated())

    def device_name(self) -> str:
        return self.module().get_device_name()

    def limit_memory(self, memory: int | None) -> None:
        """Let this process's allocator hand out at most `memory` bytes (None: all)."""
        total = self.module().mem_get_info()[1]
        fraction = 1.0 if memory is None else min(1.0, memory / total)
        self.module().set_per_process_memory_fraction(fraction)

    def free_memory_bytes(self) -> int:
        return int(self.module().mem_get_info()[0])


# Environment variables that change what an fp32 matmul computes on CUDA.
TF32_ENVIRONMENT = ("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "NVIDIA_TF32_OVERRIDE")


class CudaBackend(_AcceleratorBackend):
    """NVIDIA's CUDA, or AMD's ROCm (which torch also calls cuda)."""

    name = "cuda"

    def availability(self) -> tuple[bool, str]:
        if torch.version.cuda is None and torch.version.hip is None:
            return False, f"torch {torch.__version__} is built without CUDA or ROCm"
        if not torch.cuda.is_available():
            return False, "torch.cuda.is_available() is False (no GPU or driver)"
        return True, ""

    def dtypes(self) -> tuple[str, ...]:
        # Emulated bf16 (T4, V100) counts as supported unless asked not to.
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return (*(("fp32", "fp16", "bf16") if native else ("fp32", "fp16")), *QUANTIZED)

    def pin_fp32(self) -> dict:
        settings = super().pin_fp32()  # "highest": no TF32 in cuBLAS matmuls
        torch.backends.cudnn.allow_tf32 = False
        return {**settings, "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                **{name: os.environ[name] for name in TF32_ENVIRONMENT if name in os.environ}}

    def fp32_problem(self, settings: dict) -> str:
        if settings.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE") == "1":
            return ("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 (NVIDIA's NGC images set it) makes "
                    "cuBLAS compute fp32 matmuls in TF32 whatever torch is told; unset it to "
                    "gate fp32")
        if settings.get("cuda.matmul.allow_tf32") or settings.get("cudnn.allow_tf32"):
            return "TF32 is still allowed after pinning fp32 matmuls to 'highest'"
        return ""


class NpuBackend(_AcceleratorBackend):
    name = "npu"

    def availability(self) -> tuple[bool, str]:
        try:
            importlib.import_module("torch_npu")
        except Exception as e:  # ImportError, or OSError from a missing CANN library
            return False, f"torch_npu not importable: {e}"
        if not torch.npu.is_available():
            return False, "torch.npu.is_available() is False (no NPU or driver)"
        return True, ""

    def dtypes(self) -> tuple[str, ...]:
        # Atlas 300I / 310P and the 910A-generation chips have no bf16 arithmetic.
        if torch.npu.is_bf16_supported():
            return ("fp32", "fp16", "bf16", *QUANTIZED)
        return ("fp32", "fp16", *QUANTIZED)

    def pin_fp32(self) -> dict:
        """Before Ascend910B1 torch_npu defaults ACL_PRECISION_MODE to allow_fp32_to_fp16
        (fp32 matmuls computed in fp16); must_keep_origin_dtype keeps fp32, and an operator
        that has no fp32 kernel then fails rather than running in fp16. HF32 off too."""
        settings = super().pin_fp32()
        torch.npu.set_option({"ACL_PRECISION_MODE": NPU_FP32_MODE})
        torch.npu.matmul.allow_hf32 = False
        torch.npu.conv.allow_hf32 = False
        return {**settings, "ACL_PRECISION_MODE": NPU_FP32_MODE,
                "npu.matmul.allow_hf32": torch.npu.matmul.allow_hf32,
                "npu.conv.allow_hf32": torch.npu.conv.allow_hf32}

    def fp32_problem(self, settings: dict) -> str:
        if settings.get("ACL_PRECISION_MODE") != NPU_FP32_MODE:
            return f"ACL_PRECISION_MODE is {settings.get('ACL_PRECISION_MODE')!r}"
        if settings.get("npu.matmul.allow_hf32") or settings.get("npu.conv.allow_hf32"):
            return "HF32 is still allowed after it was turned off"
        return ""


NPU_FP32_MODE = "must_keep_origin_dtype"


BACKENDS = {"cpu": CpuBackend, "cuda": CudaBackend, "npu": NpuBackend}


@cache
def cpu_description() -> dict:
    """What a CPU figure depends on: the vector extensions torch's kernels use (AVX2 or
    AVX-512 machines differ), the model, the cores and the threads torch runs."""
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_model": CpuBackend().device_name(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads()}


def describe_cpu(info: dict) -> str:
    return (f"{info['cpu_model']}, {info['cpu_capability']}, {info['cores']} cores, "
            f"{info['threads']} threads")


_PINNED: dict[str, dict] = {}


def pinned_precision(backend: Backend) -> dict:
    """`backend.pin_fp32()`, once per process per device: the settings fp32 runs under."""
    if backend.name not in _PINNED:
        _PINNED[backend.name] = backend.pin_fp32()
    return _PINNED[backend.name]


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown hardware {name!r}; valid: {', '.join(BACKENDS)}")
    return BACKENDS[name]()

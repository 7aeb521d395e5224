import subprocess
import sys

import pytest
import torch

from harness.devices import get_backend


def test_cpu_is_available_with_every_dtype():
    cpu = get_backend("cpu")
    assert cpu.availability() == (True, "")
    assert cpu.dtypes() == ("fp32", "bf16", "fp16", "w8a16", "w8a8")
    assert cpu.torch_device() == torch.device("cpu")


def test_cpu_timer_measures_the_block():
    cpu = get_backend("cpu")
    with cpu.timer() as t:
        torch.randn(256, 256) @ torch.randn(256, 256)
    assert 0 < t.ms < 10_000


def test_cpu_peak_memory_sees_a_large_allocation():
    cpu = get_backend("cpu")
    cpu.reset_peak_memory()
    before = cpu.peak_memory_bytes()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    after = cpu.peak_memory_bytes()
    assert after - before >= 60 * 2**20
    del block


def test_cpu_copy_bandwidth_is_plausible():
    gbs = get_backend("cpu").copy_bandwidth(nbytes=64 * 2**20, repeats=3) / 1e9
    assert 0.1 < gbs < 10_000


def test_npu_unavailable_says_why_and_torch_still_imports():
    ok, reason = get_backend("npu").availability()
    if ok:
        pytest.skip("an NPU is present")
    assert reason.startswith("torch_npu not importable") or "npu" in reason


def test_cuda_unavailable_says_why():
    ok, reason = get_backend("cuda").availability()
    if ok:
        pytest.skip("a GPU is present")
    assert "CUDA" in reason or "cuda" in reason


def test_torch_npu_is_imported_only_when_npu_is_asked_for():
    code = ("import sys, harness.devices as d, harness.runners, harness.plugin; "
            "assert 'torch_npu' not in sys.modules; d.get_backend('cpu').availability(); "
            "assert 'torch_npu' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr

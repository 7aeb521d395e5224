"""The cuda and npu paths against a test double of the `torch.cuda` / `torch.npu` surface the
project uses: which device each tensor-parallel rank binds, the precision fp32 runs in, the
dtype queries, and what is measured once per device. No accelerator is needed; the double
records the calls, so the wiring is checked wherever the tests run."""

import json
import sys
import types
from types import SimpleNamespace

import pytest
import torch

import harness.devices as devices
import harness.tp as tp
from harness.cases import Case
from harness.devices import CudaBackend, NpuBackend
from harness.pool import RunnerPool


class FakeDevice(types.ModuleType):
    """`torch.npu` or `torch.cuda` as far as llmgate calls it; `calls` in order."""

    def __init__(self, name: str, device_name: str, bf16: bool):
        super().__init__(f"torch.{name}")
        self.calls, self._device_name, self._bf16 = [], device_name, bf16
        self.matmul = SimpleNamespace(allow_hf32=True)  # torch_npu's defaults
        self.conv = SimpleNamespace(allow_hf32=True)

    def is_available(self):
        return True

    def get_device_name(self, device=None):
        return self._device_name

    def is_bf16_supported(self, **kwargs):
        self.calls.append(("is_bf16_supported", kwargs))
        return self._bf16 and kwargs.get("including_emulation", True)

    def set_device(self, index):
        self.calls.append(("set_device", index))

    def set_option(self, option):
        self.calls.append(("set_option", option))


@pytest.fixture
def npu(monkeypatch):
    """A 910A-generation NPU (no bf16), torch_npu importable."""
    fake = FakeDevice("npu", "Ascend910ProB", bf16=False)
    monkeypatch.setattr(torch, "npu", fake, raising=False)
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    monkeypatch.setattr(devices, "_PINNED", {})
    return fake


@pytest.fixture
def cuda(monkeypatch):
    """A T4: bf16 only by emulation."""
    fake = FakeDevice("cuda", "Tesla T4", bf16=True)
    monkeypatch.setattr(torch.cuda, "is_available", fake.is_available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", fake.is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "set_device", fake.set_device)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(devices, "_PINNED", {})
    monkeypatch.delenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", raising=False)
    precision = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")  # TF32 on, as a user's script may leave it
    yield fake
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = cudnn_tf32


def test_npu_fp32_keeps_fp32_and_turns_hf32_off(npu):
    # Before Ascend910B1 torch_npu computes fp32 matmuls in fp16 unless told otherwise.
    settings = NpuBackend().pin_fp32()
    assert ("set_option", {"ACL_PRECISION_MODE": "must_keep_origin_dtype"}) in npu.calls
    assert npu.matmul.allow_hf32 is False and npu.conv.allow_hf32 is False
    assert settings["ACL_PRECISION_MODE"] == "must_keep_origin_dtype"
    assert NpuBackend().fp32_problem(settings) == ""


def test_npu_bf16_support_is_asked_of_torch_npu_not_guessed_from_the_name(npu):
    assert "bf16" not in NpuBackend().dtypes()  # a 910ProB: no "310" in its name
    npu._bf16 = True
    assert "bf16" in NpuBackend().dtypes()


def test_cuda_bf16_counts_native_support_only(cuda):
    assert "bf16" not in CudaBackend().dtypes()
    assert ("is_bf16_supported", {"including_emulation": False}) in cuda.calls


def test_a_rocm_build_is_usable(cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", "6.2.4", raising=False)
    assert CudaBackend().availability() == (True, "")


def test_cuda_fp32_is_pinned_without_tf32(cuda):
    settings = CudaBackend().pin_fp32()
    assert torch.get_float32_matmul_precision() == "highest"
    assert settings["cuda.matmul.allow_tf32"] is False and settings["cudnn.allow_tf32"] is False
    assert CudaBackend().fp32_problem(settings) == ""


def test_the_ngc_tf32_override_fails_fp32_cases_and_not_others(cuda, monkeypatch):
    monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1")
    pool = RunnerPool.__new__(RunnerPool)
    pool.settings = SimpleNamespace(require_hardware=False)
    with pytest.raises(pytest.fail.Exception, match="TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1"):
        pool.backend(Case("qwen-tiny", "cuda", "fp32", 1, 16, 8))
    assert pool.backend(Case("qwen-tiny", "cuda", "fp16", 1, 16, 8)).name == "cuda"


@pytest.mark.parametrize("hardware, group", [("npu", "hccl"), ("cuda", "nccl")])
def test_a_rank_binds_its_device_before_it_joins_the_group(npu, cuda, monkeypatch, hardware,
                                                           group):
    fake = {"npu": npu, "cuda": cuda}[hardware]
    monkeypatch.delitem(sys.modules, "torch_npu")  # a spawned rank has not imported it
    imported = []
    real_import = tp.importlib.import_module
    monkeypatch.setattr(tp.importlib, "import_module",
                        lambda name: imported.append(name) or types.ModuleType(name)
                        if name == "torch_npu" else real_import(name))
    joined = []
    monkeypatch.setattr(tp.dist, "init_process_group", lambda backend, **kw: joined.append(
        (backend, kw["rank"], [c for c in fake.calls if c[0] == "set_device"])))
    monkeypatch.delenv("TORCH_NCCL_BLOCKING_WAIT", raising=False)
    tp._join(1, 2, hardware)
    assert joined == [(group, 1, [("set_device", 1)])]  # bound before the group starts
    assert imported == (["torch_npu"] if hardware == "npu" else [])
    if hardware == "cuda":  # a failed collective raises in pytest instead of aborting it
        assert tp.os.environ["TORCH_NCCL_BLOCKING_WAIT"] == "1"
    assert hardware in devices._PINNED


def test_call_arguments_leave_for_the_ranks_on_the_cpu():
    nested = (torch.ones(2), [torch.zeros(1), torch.ones(1)], 3)
    moved = tp._on_cpu(nested)
    assert isinstance(moved, tuple) and isinstance(moved[1], list) and moved[2] == 3
    assert all(t.device.type == "cpu" for t in (moved[0], *moved[1]))


def test_copy_bandwidth_is_measured_once_per_device(monkeypatch):
    from harness.perf import case

    measured = []
    monkeypatch.setattr(case, "_BANDWIDTH", {})
    monkeypatch.setattr(devices.CpuBackend, "copy_bandwidth",
                        lambda self: measured.append(1) or 1e10)
    assert case.bandwidth(devices.CpuBackend()) == case.bandwidth(devices.CpuBackend()) == 1e10
    assert len(measured) == 1  # a backend object per case, one measurement per device


def test_an_hf_port_that_casts_itself_is_refused_naming_the_dtype(tmp_path):
    from harness.ports.hf import HFRunner
    from models.checkpoint import CheckpointError
    from tests.conftest import remote_code_checkpoint

    out = remote_code_checkpoint(tmp_path / "self-casting")
    (out / "modeling_tinyllama.py").write_text(
        "import torch\nfrom transformers import LlamaForCausalLM\n\n\n"
        "class TinyLlamaForCausalLM(LlamaForCausalLM):\n"
        "    def __init__(self, config):  # as Qwen v1's autoset_precision without a precision\n"
        "        super().__init__(config)\n        self.to(torch.bfloat16)\n")
    with pytest.raises(CheckpointError, match=r"asked for fp32, .*100% of its weights in bf16"):
        HFRunner(out, trust_remote_code=True)


def test_the_run_records_the_settings_fp32_ran_under(suites):
    result = suites.runpytest("copied_suites/numerics", "--model", "qwen-tiny", "--dtype",
                              "fp32", "--batch", "1", "--seqlen", "16", "-k", "teacher",
                              "--run-id", "pinned")
    result.assert_outcomes(passed=1)
    run = json.loads((suites.path / "reports" / "pinned" / "run.json").read_text())
    assert run["fp32_settings"] == {"cpu": {"float32_matmul_precision": "highest"}}


def test_int8_on_npu_calls_ascends_kernels_as_documented(monkeypatch):
    # torch_npu's documented contracts: npu_weight_quant_batchmatmul(x (M, K) fp16/bf16,
    # weight (K, N) int8, antiquant_scale (N,) in x's dtype); npu_quant_matmul(x1 (M, K) int8,
    # x2 (K, N) int8, scale (N,) float32, pertoken_scale=(M,) float32, output_dtype=fp16/bf16).
    from models.precision import Precision
    from models.quant import (
        int8_kernel,
        int8_matmul,
        npu_quant_matmul,
        npu_weight_only_matmul,
        quantize_rows,
        quantize_tokens,
    )

    calls = []

    def weight_quant_batchmatmul(x, weight, antiquant_scale):
        calls.append((x.dtype, tuple(weight.shape), weight.dtype, antiquant_scale.dtype))
        return (x.float() @ (weight.float() * antiquant_scale.float())).to(x.dtype)

    def quant_matmul(x1, x2, scale, *, pertoken_scale, output_dtype):
        calls.append((x1.dtype, tuple(x2.shape), scale.dtype, tuple(pertoken_scale.shape),
                      pertoken_scale.dtype, output_dtype))
        return ((x1.float() @ x2.float()) * scale * pertoken_scale[:, None]).to(output_dtype)

    fake = types.ModuleType("torch_npu")
    fake.npu_weight_quant_batchmatmul = weight_quant_batchmatmul
    fake.npu_quant_matmul = quant_matmul
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    generator = torch.Generator().manual_seed(0)
    weight_int8, scale = quantize_rows(torch.randn(16, 32, generator=generator))
    x = torch.randn(3, 32, generator=generator).half()

    y = npu_weight_only_matmul(x, weight_int8, scale)
    assert calls[-1] == (torch.float16, (32, 16), torch.int8, torch.float16)
    expected = x.float() @ (weight_int8.float() * scale[:, None]).t()
    assert torch.allclose(y.float(), expected, rtol=2e-3, atol=2e-2)

    x_int8, x_scale = quantize_tokens(x)
    y = npu_quant_matmul(x_int8, x_scale, weight_int8, scale, torch.float16)
    assert calls[-1] == (torch.int8, (32, 16), torch.float32, (3,), torch.float32,
                         torch.float16)
    expected = int8_matmul(x_int8, weight_int8) * x_scale * scale[None, :]
    assert torch.allclose(y.float(), expected, rtol=2e-3, atol=2e-2)

    assert int8_kernel(Precision.of("w8a16", "npu"), "npu") == \
        "torch_npu.npu_weight_quant_batchmatmul"
    assert int8_kernel(Precision.of("w8a8", "npu"), "npu") == "torch_npu.npu_quant_matmul"
    assert int8_kernel(Precision.of("w8a16", "cuda"), "cuda").startswith("dequantize")

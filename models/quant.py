"""INT8 quantization as `Linear` methods, one entry point: `quantize_(model, Int8WeightOnly())`.

Both schemes quantize weights per output channel, symmetrically: scale = max|w_row| / 127,
w_int8 = round(w / scale). They differ in the activations:
  - W8A16 (`Int8WeightOnly`): activations stay in the model dtype (the device's half type).
    On the CPU with bf16 activations the matmul is PyTorch's int8 weight-pack kernel
    (`aten._weight_int8pack_mm`: a quarter of fp32's weight bytes, and far faster than a bf16
    dense matmul on this CPU; at batch 1 it is compute-limited, see
    benchmarks/int8_decode.py); elsewhere the weight is dequantized and multiplied.
  - W8A8 (`Int8DynamicActivation`): activations are quantized per token at run time
    (scale = max|x_row| / 127), multiplied with `torch._int_mm` (int32 accumulation, exact) and
    rescaled by both scales into the model dtype.
Which layers are quantized is an explicit argument, never parsed from a name: by default every
`Linear` but the LM head (embeddings are not `Linear`s).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import Linear

QMAX = 127


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric int8: (int8 weight, float32 scale per row)."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / QMAX).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.round(w / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8), scale


def quantize_tokens(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token (last dimension) symmetric int8, W8A8's activations: (int8 values, float32
    scale (..., 1))."""
    x32 = x.float()
    scale = (x32.abs().amax(dim=-1, keepdim=True) / QMAX).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.round(x32 / scale).clamp(-QMAX, QMAX).to(torch.int8), scale


class Int8Method:
    """Storage shared by both schemes: `weight_int8` (out, in) and `weight_scale` (out,)."""

    scheme = ""

    def create_weights(self, layer: Linear, bias: bool) -> None:
        layer.register_buffer("weight_int8", torch.empty(layer.out_features, layer.in_features,
                                                         dtype=torch.int8))
        layer.register_buffer("weight_scale", torch.empty(layer.out_features,
                                                          dtype=torch.float32))
        layer.weight = None
        layer.bias = (nn.Parameter(torch.empty(layer.out_features), requires_grad=False)
                      if bias else None)

    def convert(self, layer: Linear) -> None:
        """Quantize a dense layer's weight in place and take it over."""
        weight_int8, scale = quantize_rows(layer.weight.data)
        bias = layer.bias
        del layer.weight
        layer.register_buffer("weight_int8", weight_int8)
        layer.register_buffer("weight_scale", scale.to(weight_int8.device))
        layer.weight = None
        layer.bias = bias
        layer.method = self

    def _bias(self, layer: Linear, y: Tensor) -> Tensor:
        return y if layer.bias is None else y + layer.bias


class Int8WeightOnly(Int8Method):
    scheme = "w8a16"

    def apply(self, layer: Linear, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        kernel = weight_only_kernel(x.device.type, x.dtype, shape[-1])
        if kernel == "aten._weight_int8pack_mm":
            y = torch.ops.aten._weight_int8pack_mm(x2, layer.weight_int8,
                                                   layer.weight_scale.to(x.dtype))
        elif kernel == "torch_npu.npu_weight_quant_batchmatmul":
            y = npu_weight_only_matmul(x2, layer.weight_int8, layer.weight_scale)
        else:
            weight = layer.weight_int8.to(x.dtype) * layer.weight_scale.to(x.dtype)[:, None]
            y = F.linear(x2, weight)
        return self._bias(layer, y.reshape(*shape[:-1], -1))


class Int8DynamicActivation(Int8Method):
    scheme = "w8a8"

    def apply(self, layer: Linear, x: Tensor) -> Tensor:
        shape = x.shape
        x_int8, x_scale = quantize_tokens(x.reshape(-1, shape[-1]))
        if dynamic_kernel(x.device.type, x.dtype) == "torch_npu.npu_quant_matmul":
            y = npu_quant_matmul(x_int8, x_scale, layer.weight_int8, layer.weight_scale, x.dtype)
        else:
            y = int8_matmul(x_int8, layer.weight_int8) * x_scale * layer.weight_scale[None, :]
        return self._bias(layer, y.to(x.dtype).reshape(*shape[:-1], -1))


def int8_kernel(precision, device: str) -> str:
    """The matmul an int8 `precision` (models.precision.Precision) runs on `device`."""
    if precision.scheme == "w8a16":
        return weight_only_kernel(device, precision.dtype)
    return dynamic_kernel(device, precision.dtype)


def weight_only_kernel(device: str, dtype: torch.dtype, in_features: int = 8) -> str:
    """The matmul W8A16 runs on `device` with `dtype` activations (records name it)."""
    # The CPU kernel reads input features in blocks of 8 (other widths crash it).
    if device == "cpu" and dtype == torch.bfloat16 and in_features % 8 == 0:
        return "aten._weight_int8pack_mm"
    if device == "npu" and dtype in (torch.float16, torch.bfloat16):
        return "torch_npu.npu_weight_quant_batchmatmul"
    return "dequantize + F.linear (fallback: a float copy of each weight per call)"


def dynamic_kernel(device: str, dtype: torch.dtype) -> str:
    """The matmul W8A8 runs on `device` (records name it)."""
    if device in ("cpu", "cuda"):
        return "torch._int_mm"
    if device == "npu" and dtype in (torch.float16, torch.bfloat16):
        return "torch_npu.npu_quant_matmul"
    return "float32 matmul of the int8 values (fallback)"


def npu_weight_only_matmul(x: Tensor, weight_int8: Tensor, scale: Tensor) -> Tensor:
    """x (M, K) fp16/bf16 @ dequantized weight (N, K)^T by Ascend's kernel: the weight is
    passed as its (K, N) transposed view, which the per-channel case prefers, and the scale
    in x's dtype, as the kernel requires."""
    import torch_npu

    return torch_npu.npu_weight_quant_batchmatmul(x, weight_int8.t(), scale.to(x.dtype))


def npu_quant_matmul(x_int8: Tensor, x_scale: Tensor, weight_int8: Tensor, scale: Tensor,
                     dtype: torch.dtype) -> Tensor:
    """Per-token x (M, K) int8 @ per-channel weight (N, K)^T int8 by Ascend's kernel, both
    scales applied inside it (float32 scales; output in `dtype`, fp16 or bf16)."""
    import torch_npu

    return torch_npu.npu_quant_matmul(x_int8, weight_int8.t(), scale.float(),
                                      pertoken_scale=x_scale.flatten().float(),
                                      output_dtype=dtype)


def int8_matmul(x: Tensor, weight: Tensor) -> Tensor:
    """x (M, K) int8 @ weight (N, K)^T with int32 accumulation, as float32 (M, N).

    cuBLAS's int8 kernel needs more than 16 rows: fewer are padded with zero rows.
    """
    rows = x.shape[0]
    if x.device.type == "cuda" and rows <= 16:
        x = torch.cat([x, x.new_zeros(17 - rows, x.shape[1])])
    if x.device.type in ("cpu", "cuda"):
        return torch._int_mm(x, weight.t())[:rows].float()
    # Other devices: the int8 values are exact in float32; sums beyond 2^24 round.
    return (x.float() @ weight.float().t())[:rows]


SCHEMES = {"w8a16": Int8WeightOnly(), "w8a8": Int8DynamicActivation()}


def quantized_modules(model: nn.Module) -> list[str]:
    """Names of the layers an int8 method runs."""
    return [name for name, module in model.named_modules()
            if isinstance(getattr(module, "method", None), Int8Method)]


def quantizable(model: nn.Module, include_lm_head: bool = False) -> list[str]:
    """Names of the `Linear`s a scheme applies to: all but the LM head unless asked."""
    return [name for name, module in model.named_modules()
            if isinstance(module, Linear) and (include_lm_head or name != "lm_head")]


def quantize_(model: nn.Module, method: Int8Method, modules: list[str] | None = None,
              include_lm_head: bool = False) -> list[str]:
    """Switch `modules` (default: `quantizable(model)`) to `method`; returns their names."""
    names = modules if modules is not None else quantizable(model, include_lm_head)
    found = dict(model.named_modules())
    for name in names:
        layer = found.get(name)
        if not isinstance(layer, Linear):
            raise ValueError(f"{name!r} is not a Linear layer of this model")
        if layer.weight is None:
            raise ValueError(f"{name!r} is already quantized")
        method.convert(layer)
    return names


def cast_floats_(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Every floating parameter and buffer to `dtype`, except W8A8's scales, kept float32
    (they rescale an int32 accumulator; a bf16 scale would move each row by up to 0.4%).
    W8A16's scales take the activation dtype: the CPU int8 kernel takes them so, and a
    compiled graph cannot cast them on the way in."""
    for module in model.modules():
        keep = isinstance(getattr(module, "method", None), Int8DynamicActivation)
        for name, tensor in [*module.named_parameters(recurse=False),
                             *module.named_buffers(recurse=False)]:
            if tensor is None or not tensor.is_floating_point():
                continue
            if not (keep and name == "weight_scale"):
                tensor.data = tensor.data.to(dtype)
    return model


def prepare_quantized(model: nn.Module, method: Int8Method, modules: list[str]) -> None:
    """Give `modules` the empty int8 storage of `method`, to load a quantized checkpoint into
    (no float weights exist to quantize)."""
    found = dict(model.named_modules())
    for name in modules:
        layer = found.get(name)
        if not isinstance(layer, Linear):
            raise ValueError(f"{name!r} is not a Linear layer of this model")
        bias = layer.bias is not None
        del layer.weight
        if bias:
            del layer.bias
        method.create_weights(layer, bias)
        layer.method = method

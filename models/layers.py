"""Shared building blocks of the ported models.

Every family file wires these (and `models.attention`); none of them knows which family it
serves. Numerics follow the HuggingFace implementations (the reference): RMSNorm normalises in
fp32 and casts back before the weight, rotary tables are computed in fp32, ALiBi is built in
fp32 and cast to the model dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------- linear layers


class DenseMethod:
    """How a `Linear` stores and applies its weight: plain floating point, `F.linear`.

    A quantized method (int8 weights plus scales) implements the same two calls, so switching
    a model to it touches neither the family files nor `Linear`.
    """

    def create_weights(self, layer: Linear, bias: bool) -> None:
        layer.weight = nn.Parameter(torch.empty(layer.out_features, layer.in_features),
                                    requires_grad=False)
        layer.bias = (nn.Parameter(torch.empty(layer.out_features), requires_grad=False)
                      if bias else None)

    def apply(self, layer: Linear, x: Tensor) -> Tensor:
        return F.linear(x, layer.weight, layer.bias)


DENSE = DenseMethod()


@torch.library.custom_op("llmgate::onednn_linear", mutates_args=())
def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """oneDNN's linear kernel. An operator of its own, so that `torch.compile` calls it as it
    is instead of lowering it (inductor's own lowering of this kernel expects a weight frozen
    into the graph)."""
    return _onednn_kernel(x, weight, bias)


def _onednn_kernel(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


class CpuDenseMethod(DenseMethod):
    """Floating-point weights on the CPU, as they are, on faster kernels than `F.linear`'s.

    In a compiled step of one row, the decode step at batch 1, the 1 x K by K x N product is
    written as a multiply-and-sum in float32, which inductor turns into a vectorised loop of
    its own that streams the weight close to the memory bandwidth (a bf16 or fp16 weight is
    widened in the loop, so half the bytes of float32 cross it). In float32, eager calls and
    compiled steps of more rows run on oneDNN's linear kernel (what inductor's weight
    prepacking calls under freezing; on the plain weight it is as fast as on one reordered into
    oneDNN's layout); other dtypes keep `F.linear` there. At batch 1 in float32 both stream
    the weight 1.5-2x faster than `F.linear`, on AVX-512 and AVX2 alike
    (benchmarks/linear_kernels.py); results differ from it by rounding only (the products are
    summed in float32 in both).
    """

    def create_weights(self, layer: Linear, bias: bool) -> None:
        raise TypeError("a CPU dense layer is made from a loaded dense one by convert()")

    def convert(self, layer: Linear) -> None:
        layer.method = self

    def apply(self, layer: Linear, x: Tensor) -> Tensor:
        onednn = layer.weight.dtype == torch.float32
        if not torch.compiler.is_compiling():  # the operator's dispatch costs ~8 us a call
            return (_onednn_kernel if onednn else F.linear)(x, layer.weight, layer.bias)
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] != 1:
            return (onednn_linear if onednn else F.linear)(x, layer.weight, layer.bias)
        y = (rows.float()[:, None, :] * layer.weight.float()[None]).sum(-1)
        y = y if layer.bias is None else y + layer.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)


CPU_DENSE = CpuDenseMethod()


def can_use_cpu_dense(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether `CpuDenseMethod` serves a model on `device` in `dtype`."""
    return (torch.device(device).type == "cpu" and dtype.is_floating_point
            and (dtype != torch.float32 or torch.backends.mkldnn.is_available()))


class Linear(nn.Module):
    """`y = x W^T + b`, declaring how it would be split for tensor parallelism.

    split="column": output features are divided across ranks; `output_sizes` lists the fused
    parts (q|k|v, gate|up) so that each part is divided on its own. split="row": input
    features are divided and the partial outputs are summed across ranks (`tp_group`), the
    bias added once after the sum. At world size 1 with the dense method this is exactly
    `nn.Linear`; `models/parallel.py` does the splitting, `models/quant.py` swaps the method.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, *, split: str,
                 output_sizes: tuple[int, ...] | None = None, method: DenseMethod = DENSE):
        super().__init__()
        if split not in ("column", "row"):
            raise ValueError(f"split must be 'column' or 'row', not {split!r}")
        self.in_features, self.out_features = in_features, out_features
        self.split = split
        self.output_sizes = output_sizes or (out_features,)
        if sum(self.output_sizes) != out_features:
            raise ValueError(f"output_sizes {self.output_sizes} do not add up to {out_features}")
        self.method = method
        self.tp_group = None  # row split across ranks: partial outputs are all-reduced
        self.register_buffer("reduce_bias", None)  # the bias of a row split, added once
        method.create_weights(self, bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.method.apply(self, x)
        if self.tp_group is not None:
            torch.distributed.all_reduce(y, group=self.tp_group)
            if self.reduce_bias is not None:
                y = y + self.reduce_bias
        return y

    def shard(self, rows: list[int] | None = None, cols: list[int] | None = None,
              output_sizes: tuple[int, ...] | None = None) -> None:
        """Keep only `rows` (output features) and/or `cols` (input features) of every weight
        tensor: the float weight, or the int8 weight and its per-row scales."""
        for name in ("weight", "weight_int8", "weight_scale", "bias"):
            tensor = getattr(self, name, None)
            if tensor is None:
                continue
            if rows is not None:
                tensor = tensor[rows]
            if cols is not None and tensor.dim() == 2:
                tensor = tensor[:, cols]
            tensor = tensor.contiguous()
            if isinstance(getattr(self, name), nn.Parameter):
                setattr(self, name, nn.Parameter(tensor, requires_grad=False))
            else:
                setattr(self, name, tensor)
        if rows is not None:
            self.out_features = len(rows)
            self.output_sizes = output_sizes or (len(rows),)
        if cols is not None:
            self.in_features = len(cols)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, "
                f"split={self.split}")


# --------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """Llama/Qwen RMSNorm: normalise in fp32, cast back, then scale (as HF does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


def layer_norm(dim: int, eps: float) -> nn.LayerNorm:
    norm = nn.LayerNorm(dim, eps=eps)
    norm.requires_grad_(False)
    return norm


# --------------------------------------------------------------------------- positions


class Rotary:
    """Rotary position embedding (rotate-half convention, as HF Llama/Qwen2/Falcon)."""

    def __init__(self, head_dim: int, theta: float):
        # Same expression as HF's default rope init, so the fp32 tables are bit-identical.
        # Built on the CPU even while the model itself is built on the meta device.
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
        self.inv_freq = 1.0 / (theta ** exponents)

    def tables(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos, sin for integer positions (B, T) -> each (B, T, 1, D)."""
        if self.inv_freq.device != positions.device:  # once, not per step
            self.inv_freq = self.inv_freq.to(positions.device)
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    @staticmethod
    def apply(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x (B, T, heads, D) rotated by the tables (B, T, 1, D)."""
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin


def alibi_slopes(num_heads: int) -> Tensor:
    """Per-head ALiBi slopes (Press et al.; the BLOOM recipe for non-powers of two)."""
    with torch.device("cpu"):
        closest = 2 ** math.floor(math.log2(num_heads))
        base = torch.tensor(2 ** (-(2 ** -(math.log2(closest) - 3))), dtype=torch.float32)
        slopes = torch.pow(base, torch.arange(1, 1 + closest, dtype=torch.int32))
        if closest != num_heads:
            extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest) - 3))),
                                      dtype=torch.float32)
            remaining = min(closest, num_heads - closest)
            extra = torch.pow(extra_base, torch.arange(1, 1 + 2 * remaining, 2, dtype=torch.int32))
            slopes = torch.cat([slopes, extra])
        return slopes


# --------------------------------------------------------------------------- MLPs


class GatedMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), with gate|up fused into one linear."""

    def __init__(self, hidden: int, intermediate: int, bias: bool):
        super().__init__()
        self.intermediate = intermediate
        self.gate_up = Linear(hidden, 2 * intermediate, bias, split="column",
                              output_sizes=(intermediate, intermediate))
        self.down = Linear(intermediate, hidden, bias, split="row")

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).split(self.intermediate, dim=-1)
        return self.down(F.silu(gate) * up)


class MLP(nn.Module):
    """down(act(up(x))) with GELU, exact ("none") or tanh-approximated ("tanh")."""

    def __init__(self, hidden: int, intermediate: int, bias: bool, gelu: str):
        super().__init__()
        self.gelu = gelu
        self.up = Linear(hidden, intermediate, bias, split="column")
        self.down = Linear(intermediate, hidden, bias, split="row")

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x), approximate=self.gelu))

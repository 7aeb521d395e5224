"""Shared building blocks of the ported models.

Every family file wires these; none of them knows which family it serves. Numerics follow the
HuggingFace implementations (the reference): RMSNorm normalises in fp32 and casts back before
the weight, rotary tables are computed in fp32, ALiBi is built in fp32 and cast to the model
dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


# --------------------------------------------------------------------------- attention


@dataclass
class StepContext:
    """What every layer of one forward step shares; built once per step by the model."""

    start: int  # cache slot of the first new token
    rope: tuple[Tensor, Tensor] | None  # cos, sin (B, T, 1, D)
    mask: Tensor | None  # bool (B, 1, T, S) or additive (B, H, T, S); None: no padding
    is_causal: bool  # prefill into an empty cache without padding


class Attention(nn.Module):
    """Multi-head, grouped-query or multi-query attention over a static KV cache.

    The projection is one fused q|k|v linear; checkpoint layouts are rearranged into it at
    load time by the family files.
    """

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, qkv_bias: bool,
                 out_bias: bool):
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = hidden // num_heads
        q_size, kv_size = num_heads * self.head_dim, num_kv_heads * self.head_dim
        self.qkv = Linear(hidden, q_size + 2 * kv_size, qkv_bias, split="column",
                          output_sizes=(q_size, kv_size, kv_size))
        self.out = Linear(q_size, hidden, out_bias, split="row")
        self.k_cache: Tensor | None = None
        self.v_cache: Tensor | None = None

    def allocate(self, batch: int, max_len: int, dtype: torch.dtype, device) -> None:
        shape = (batch, self.num_kv_heads, max_len, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    def forward(self, x: Tensor, ctx: StepContext) -> Tensor:
        B, T, _ = x.shape
        H, KV = self.num_heads, self.num_kv_heads
        qkv = self.qkv(x).view(B, T, H + 2 * KV, self.head_dim)
        qk, v = qkv[:, :, : H + KV], qkv[:, :, H + KV:]
        if ctx.rope is not None:
            qk = Rotary.apply(qk, *ctx.rope)  # q and k rotated together
        q = qk[:, :, :H].transpose(1, 2)  # (B, H, T, D)
        end = ctx.start + T
        self.k_cache[:, :, ctx.start:end] = qk[:, :, H:].transpose(1, 2)  # (B, KV, T, D)
        self.v_cache[:, :, ctx.start:end] = v.transpose(1, 2)
        k, v = self.k_cache[:, :, :end], self.v_cache[:, :, :end]
        if (T == 1 and x.device.type == "cpu" and q.dtype != torch.float32
                and torch.compiler.is_compiling()):
            y = one_query_attention(q, k, v, ctx.mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask,
                                               is_causal=ctx.is_causal, enable_gqa=KV != H)
        return self.out(y.transpose(1, 2).reshape(B, T, H * self.head_dim))


def one_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention of one query per row, as SDPA computes it, written out for inductor to fuse.

    q (B, H, 1, D); k, v (B, KV, S, D), each key/value head shared by H / KV query heads; mask
    None, bool (B, 1, 1, S) or additive (B, H, 1, S). Scores, softmax and the weighted sum are
    computed in float32 (as SDPA's CPU kernel accumulates). In a compiled decode step on the
    CPU with bf16 or fp16 activations this is 3-10x faster than SDPA's flash kernel, whose
    per-call cost dominates at one query (W8A16: 1.8 ms of a 10 ms step,
    `benchmarks/int8_decode.py --profile`). float32 steps keep SDPA: there the two are level
    on AVX-512, and this one is slower with the kernels limited to AVX2 (20.3 against 15.3 ms
    a step)."""
    B, H, _, D = q.shape
    KV, S = k.shape[1], k.shape[2]
    grouped = q.reshape(B, KV, H // KV, 1, D).float()
    scores = (grouped * k.float()[:, :, None]).sum(-1) * D ** -0.5  # (B, KV, H / KV, S)
    if mask is not None:
        mask = mask.expand(B, H, 1, S).reshape(B, KV, H // KV, S)
        scores = (scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
                  else scores + mask.float())
    weights = scores.softmax(-1)
    y = (weights[..., None] * v.float()[:, :, None]).sum(-2)  # (B, KV, H / KV, D)
    return y.reshape(B, H, 1, D).to(q.dtype)


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

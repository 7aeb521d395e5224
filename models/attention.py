"""Attention over a static KV cache: multi-head, grouped-query or multi-query.

`Attention` writes each step's keys and values into its cache and attends over it with SDPA,
or, in a compiled one-token step on the CPU in bf16 or fp16, with `one_query_attention`.
`StepContext` is what every layer of one forward step shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import Linear, Rotary


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

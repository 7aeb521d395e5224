"""The decoder stack every family shares: blocks, positions, masks, logits.

A family file builds a `DecoderLM` out of the pieces in `layers.py` and `attention.py`; this
module only runs them. Batches are left-padded: row b starts with `pad[b]` padding slots, so
the token in cache slot s has position s - pad[b].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import Attention, StepContext
from models.config import ModelConfig
from models.layers import CPU_DENSE, DENSE, Linear, Rotary, alibi_slopes


class Block(nn.Module):
    """One decoder layer, sequential (x + attn, then + mlp) or parallel (x + attn + mlp).

    A parallel block with `mlp_norm=None` feeds both branches from `attn_norm` (Falcon-7B).
    """

    def __init__(self, attn: Attention, mlp: nn.Module, attn_norm: nn.Module,
                 mlp_norm: nn.Module | None, parallel: bool = False):
        super().__init__()
        self.attn, self.mlp = attn, mlp
        self.attn_norm, self.mlp_norm = attn_norm, mlp_norm
        self.parallel = parallel

    def forward(self, x: Tensor, ctx: StepContext) -> Tensor:
        if self.parallel:
            h = self.attn_norm(x)
            m = h if self.mlp_norm is None else self.mlp_norm(x)
            return x + (self.mlp(m) + self.attn(h, ctx))
        x = x + self.attn(self.attn_norm(x), ctx)
        return x + self.mlp(self.mlp_norm(x))


class DecoderLM(nn.Module):
    """Embeddings -> blocks -> final norm -> logits, with one of three position schemes.

    position: "rope" (rotary in attention), "alibi" (additive per-head bias) or "learned"
    (`pos_embed` added to the token embeddings). `lm_head=None` ties it to `embed`.
    """

    def __init__(self, config: ModelConfig, embed: nn.Embedding, blocks: list[Block],
                 final_norm: nn.Module, lm_head: Linear | None, *, position: str,
                 embed_norm: nn.Module | None = None, pos_embed: nn.Embedding | None = None):
        super().__init__()
        if position not in ("rope", "alibi", "learned"):
            raise ValueError(f"position must be rope, alibi or learned, not {position!r}")
        self.config = config
        self.embed, self.embed_norm, self.pos_embed = embed, embed_norm, pos_embed
        self.blocks = nn.ModuleList(blocks)
        self.final_norm, self.lm_head = final_norm, lm_head
        self.position = position
        self.rotary = Rotary(config.head_dim, config.rope_theta) if position == "rope" else None
        self.slopes = alibi_slopes(config.num_heads) if position == "alibi" else None

    def allocate_cache(self, batch: int, max_len: int) -> None:
        """Pre-allocate every layer's KV cache for `batch` rows of up to `max_len` tokens."""
        if max_len > self.config.max_positions:
            raise ValueError(f"{self.config.name}: {max_len} tokens exceed its "
                             f"{self.config.max_positions} positions")
        self.release_cache()  # the old cache is freed before the new one is allocated
        p = self.embed.weight
        for block in self.blocks:
            block.attn.allocate(batch, max_len, p.dtype, p.device)

    def release_cache(self) -> None:
        for block in self.blocks:
            block.attn.k_cache = block.attn.v_cache = None

    def cache_prefix(self, length: int) -> list[tuple[Tensor, Tensor]]:
        """A copy of row 0's first `length` cache slots, per layer (a shared prompt prefix)."""
        return [(b.attn.k_cache[:1, :, :length].clone(), b.attn.v_cache[:1, :, :length].clone())
                for b in self.blocks]

    def load_cache_prefix(self, prefix: list[tuple[Tensor, Tensor]]) -> None:
        """Write a `cache_prefix` copy into the first slots of every row."""
        for block, (k, v) in zip(self.blocks, prefix):
            length = k.shape[2]
            block.attn.k_cache[:, :, :length] = k  # (1, KV, P, D) broadcast over rows
            block.attn.v_cache[:, :, :length] = v

    @property
    def cache_shape(self) -> tuple[int, int]:
        """(batch, max_len) of the allocated KV cache; (0, 0) before allocation."""
        cache = self.blocks[0].attn.k_cache
        return (0, 0) if cache is None else (cache.shape[0], cache.shape[2])

    def forward(self, tokens: Tensor, start: int, pad: Tensor | None,
                all_logits: bool = False, last: Tensor | None = None) -> Tensor:
        """Run tokens (B, T) into cache slots [start, start + T).

        pad: (B,) left-padding per row, or None when no row is padded. Returns logits
        (B, V) for the last position (or for position `last[b]` of each row, when rows are
        right-padded), or (B, T, V) with `all_logits`.
        """
        B, T = tokens.shape
        batch, max_len = self.cache_shape
        if start + T > max_len or B != batch:
            raise ValueError(f"{B} rows of {start + T} tokens do not fit the allocated cache "
                             f"of {batch} rows x {max_len}")
        positions = torch.arange(start, start + T, device=tokens.device).expand(B, T)
        if pad is not None:
            positions = (positions - pad[:, None]).clamp(min=0)  # (B, T)
        x = self.embed(tokens)  # (B, T, C)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        ctx = self._context(positions, start, T, pad, x.dtype)
        for block in self.blocks:
            x = block(x, ctx)
        if last is not None:
            x = x[torch.arange(B, device=x.device), last]  # (B, C)
        elif not all_logits:
            x = x[:, -1]
        x = self.final_norm(x)
        return self.lm_head(x) if self.lm_head is not None else F.linear(x, self.embed.weight)

    def _context(self, positions: Tensor, start: int, T: int, pad: Tensor | None,
                 dtype: torch.dtype) -> StepContext:
        rope = self.rotary.tables(positions, dtype) if self.rotary is not None else None
        if pad is None and self.slopes is None and (T == 1 or start == 0):
            # SDPA's own causal path; a single new token sees the whole cache.
            return StepContext(start, rope, None, is_causal=T > 1)
        device = positions.device
        S = start + T
        slots = torch.arange(S, device=device)
        query_slots = slots[start:, None]  # (T, 1)
        allowed = slots[None, :] <= query_slots  # causal (T, S)
        key_pos = slots.expand(positions.shape[0], S)
        if pad is not None:
            key_pos = key_pos - pad[:, None]  # (B, S)
            # Padding slots are never attended to, except by themselves: a fully masked row
            # would make softmax produce NaN.
            allowed = (allowed & (key_pos >= 0)[:, None, :]) | (slots[None, :] == query_slots)
        mask = allowed.expand(positions.shape[0], T, S)[:, None]  # (B, 1, T, S)
        if self.slopes is None:
            return StepContext(start, rope, mask, is_causal=False)
        if self.slopes.device != device:  # once, not per step
            self.slopes = self.slopes.to(device)
        bias = self.slopes[None, :, None, None] * key_pos.clamp(min=0)[:, None, None, :]
        bias = torch.where(mask, bias.to(dtype), torch.finfo(dtype).min)  # (B, H, T, S)
        return StepContext(start, rope, bias, is_causal=False)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (a tied embedding counted once)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def streamed_weight_bytes(model: DecoderLM) -> int:
    """Weight bytes a decode step reads: all of them except embedding tables that are only
    gathered row by row (the input embedding when the LM head has a weight of its own, learned
    positions)."""
    head = model.lm_head
    tied = head is None or head.weight is model.embed.weight
    gathered = [model.pos_embed, None if tied else model.embed]
    return weight_bytes(model) - sum(weight_bytes(m) for m in gathered if m is not None)


def cpu_dense_(model: DecoderLM) -> int:
    """Put every floating-point dense `Linear` of a CPU model on `CPU_DENSE`, and return how
    many (int8 layers keep their own methods).

    A tied LM head becomes a `Linear` of its own on the embedding's very weight (no copy), so
    that it runs on the same kernels.
    """
    if model.lm_head is None:
        embed = model.embed.weight
        with torch.device("meta"):
            head = Linear(embed.shape[1], embed.shape[0], bias=False, split="column")
        head.weight = embed
        model.lm_head = head
    layers = [m for m in model.modules() if isinstance(m, Linear) and m.method is DENSE
              and m.weight.is_floating_point() and m.weight.device.type == "cpu"]
    for layer in layers:
        CPU_DENSE.convert(layer)
    return len(layers)

"""The one interface every suite drives: prefill a batch, then decode token by token.

`PortedRunner` runs the ported engine (`models/`) on any backend and dtype; `ReferenceRunner`
runs `transformers` on the CPU (fp32 is the ground truth; other dtypes measure how far the
reference itself drifts). Both take left-padded batches and return float32 logits on the CPU.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from harness.devices import Backend, activation_dtype, get_backend
from harness.devices import scheme as scheme_of_dtype
from harness.reference import fake_quantize_, load_reference
from models import ported
from models.checkpoint import CheckpointError
from models.engine import Engine, left_padding
from models.loading import load_model
from models.parallel import parallelize_
from models.quant import SCHEMES, cast_floats_, quantize_


class Runner(Protocol):
    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                all_logits: bool = False) -> Tensor:
        """Logits (B, V) of the last prompt position, or (B, T, V) with all_logits."""

    def decode(self, next_ids: Tensor) -> Tensor:
        """Logits (B, V) after appending one token per row."""

    def reset(self) -> None: ...

    def reserve(self, new_tokens: int) -> None:
        """Make room for `new_tokens` decode steps after the next prefill."""

    def prefill_shared(self, prefix: Tensor, suffixes: list[Tensor]) -> Tensor:
        """Logits (B, V) at the end of prefix + suffixes[b], for each row."""


class PortedRunner:
    """The ported model on a device; device work is synchronised before logits return."""

    def __init__(self, checkpoint: str | Path, *, hardware: str | Backend = "cpu",
                 dtype: torch.dtype = torch.float32, headroom: int = 256,
                 compile: bool = False, device_logits: bool = False,
                 scheme: str | None = None, lm_head: bool = False):
        """dtype: the activations' dtype. scheme: "w8a16" or "w8a8" quantizes the model (from
        its float32 weights; the LM head too if `lm_head`), unless the checkpoint is quantized
        already, with that scheme.
        device_logits: return logits on the device in the model dtype (the perf loop picks
        tokens there, as a serving loop would) instead of float32 on the CPU."""
        self.backend = get_backend(hardware) if isinstance(hardware, str) else hardware
        self.dtype, self.device_logits = dtype, device_logits
        self.model = load_ported(checkpoint, scheme, dtype, self.backend.torch_device(),
                                 lm_head=lm_head)
        self.engine = Engine(self.model, headroom=headroom, compile=compile)

    def _out(self, logits: Tensor) -> Tensor:
        return logits if self.device_logits else logits.float().cpu()

    def prefill(self, input_ids, attention_mask=None, all_logits=False):
        return self._out(self.engine.prefill(input_ids, attention_mask, all_logits))

    def decode(self, next_ids):
        return self._out(self.engine.decode(next_ids))

    def reset(self):
        self.engine.reset()

    def reserve(self, new_tokens: int) -> None:
        self.engine.reserve(new_tokens)

    def prefill_shared(self, prefix, suffixes):
        """The prefix runs once (and once per distinct prefix, across calls); its cache is
        copied into every row."""
        lengths = torch.tensor([len(s) for s in suffixes])
        padded = torch.zeros(len(suffixes), int(lengths.max()), dtype=torch.long)
        for row, suffix in enumerate(suffixes):
            padded[row, : len(suffix)] = suffix
        return self._out(self.engine.prefill_shared(prefix, padded, lengths))

    def release(self) -> None:
        """Free the KV cache (the next prefill allocates a new one)."""
        self.engine.release()


def load_ported(checkpoint, scheme: str | None, dtype: torch.dtype, device, *,
                lm_head: bool = False, rank: int = 0, world_size: int = 1):
    """Our model for a case: float (scheme None) or int8 with `scheme`, activations in `dtype`,
    rank `rank` of `world_size`. A quantized or split checkpoint is read as stored; anything
    else is quantized from its float32 weights (LM head too if `lm_head`) and cut here."""
    parts = ported.part_dirs(checkpoint)
    if parts is not None:
        ported.check_parts(checkpoint, world_size)
        checkpoint = parts[rank]
    stored = ported.scheme_of(checkpoint)
    if stored != scheme and (stored is not None or parts is not None):
        raise CheckpointError(f"{checkpoint}: holds {stored or 'float'} weights, but the case "
                              f"asks for {scheme or 'float'} weights (choose --dtype "
                              f"{stored or 'fp32'})")
    if parts is not None or (stored is not None and world_size == 1):
        return load_model(checkpoint, dtype=dtype, device=device)
    model = load_model(checkpoint, device=device)  # float32 (or int8 as stored)
    if scheme is not None and stored is None:
        quantize_(model, SCHEMES[scheme], include_lm_head=lm_head)
    if world_size > 1:
        parallelize_(model, rank, world_size)
    return cast_floats_(model, dtype)


def ported_runner(checkpoint, backend: Backend, dtype: str, **options) -> PortedRunner:
    """A PortedRunner for a case's dtype name: fp32/bf16/fp16, or an int8 scheme run in its
    activation dtype (`harness.devices.activation_dtype`)."""
    return PortedRunner(checkpoint, hardware=backend, dtype=activation_dtype(backend.name, dtype),
                        scheme=scheme_of_dtype(dtype), **options)


class ReferenceRunner:
    """`transformers` on the CPU, fed exactly as `generate` feeds it.

    Left padding is handled the HuggingFace way: positions count from each row's first real
    token and the 2D attention mask grows by one column per decoded token.
    """

    def __init__(self, checkpoint: str | Path, dtype: torch.dtype = torch.float32,
                 fake_quant: str | None = None, lm_head: bool = False):
        """fake_quant: simulate an int8 scheme ("w8a16", "w8a8") in floating point, on the
        LM head too if `lm_head`."""
        self.dtype = dtype
        self.model = load_reference(checkpoint, dtype)
        if fake_quant:
            fake_quantize_(self.model, fake_quant, lm_head)
        # BLOOM has no position ids (ALiBi reads positions off the mask).
        self._takes_positions = "position_ids" in inspect.signature(self.model.forward).parameters
        self.reset()

    def _forward(self, ids: Tensor, positions: Tensor, keep: int) -> Tensor:
        extra = {"position_ids": positions} if self._takes_positions else {}
        out = self.model(input_ids=ids, attention_mask=self.mask, past_key_values=self.past,
                         use_cache=True, logits_to_keep=keep, **extra)
        self.past = out.past_key_values
        return out.logits.float()

    @torch.inference_mode()
    def prefill(self, input_ids, attention_mask=None, all_logits=False):
        self.reset()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        left_padding(attention_mask)
        self.mask = attention_mask.long()
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.next_position = positions[:, -1] + 1
        logits = self._forward(input_ids, positions, keep=0 if all_logits else 1)
        return logits if all_logits else logits[:, -1]

    @torch.inference_mode()
    def decode(self, next_ids):
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(next_ids), 1)], dim=1)
        logits = self._forward(next_ids[:, None], self.next_position[:, None], keep=1)
        self.next_position = self.next_position + 1
        return logits[:, -1]

    def reset(self):
        self.past, self.mask, self.next_position = None, None, None

    def reserve(self, new_tokens: int) -> None:
        pass  # transformers' dynamic cache grows as needed

    def prefill_shared(self, prefix, suffixes):
        """Each row whole (prefix + suffix), left-padded: transformers as lm-eval runs it."""
        rows = [torch.cat([prefix, suffix]) for suffix in suffixes]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
        return self.prefill(ids, mask)

"""Inference engine: prefill, one-token decode steps, and generation over a static KV cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models.transformer import DecoderLM


def left_padding(attention_mask: Tensor) -> Tensor:
    """Padding length per row of a left-padded (B, T) 0/1 mask; anything else is an error."""
    mask = attention_mask.to(torch.bool)
    pad = (~mask).sum(dim=1)
    expected = torch.arange(mask.shape[1], device=mask.device)[None, :] >= pad[:, None]
    if not torch.equal(mask, expected):
        raise ValueError("attention_mask must be left-padded: zeros, then ones, in every row")
    if bool((pad == mask.shape[1]).any()):
        raise ValueError("attention_mask has a row with no tokens")
    return pad


class Engine:
    """Drives a `DecoderLM`: `prefill` a left-padded batch, then `decode` one token at a time.

    The KV cache holds the prompt plus `headroom` new tokens; it is allocated at prefill and
    reused while the batch size and length still fit. `compile=True` runs decode steps through
    `torch.compile` (dynamic shapes, so one graph serves every cache length): it removes most
    per-operator overhead at the price of a compilation on the first steps.
    """

    def __init__(self, model: DecoderLM, headroom: int = 256, compile: bool = False):
        self.model, self.headroom = model, headroom
        self._decode_forward = torch.compile(model, dynamic=True) if compile else model
        self.length = 0
        self.pad: Tensor | None = None
        self._prefix: tuple[Tensor, list] | None = None  # (ids, cache copy) of the last prefix

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    @torch.inference_mode()
    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                all_logits: bool = False) -> Tensor:
        """Logits for the last position (B, V), or every position (B, T, V)."""
        B, T = input_ids.shape
        pad = None if attention_mask is None else left_padding(attention_mask)
        self.pad = pad.to(self.device) if pad is not None and bool(pad.any()) else None
        capacity = max(T, min(T + self.headroom, self.model.config.max_positions))
        batch, max_len = self.model.cache_shape
        if batch != B or max_len < capacity:
            self.model.allocate_cache(B, capacity)
        self.length = T
        return self.model(input_ids.to(self.device), 0, self.pad, all_logits=all_logits)

    @torch.inference_mode()
    def decode(self, next_ids: Tensor) -> Tensor:
        """Append one token per row (B,) and return the logits of that position (B, V)."""
        logits = self._decode_forward(next_ids.to(self.device)[:, None], self.length, self.pad)
        self.length += 1
        return logits

    def reset(self) -> None:
        self.length, self.pad = 0, None

    def reserve(self, new_tokens: int) -> None:
        """Make room for `new_tokens` decode steps after the next prefill."""
        self.headroom = max(self.headroom, new_tokens)

    def release(self) -> None:
        """Free the KV cache (the next prefill allocates a new one)."""
        self.reset()
        self._prefix = None
        self.model.release_cache()

    @torch.inference_mode()
    def prefill_shared(self, prefix: Tensor, suffixes: Tensor, lengths: Tensor,
                       all_logits: bool = False) -> Tensor:
        """Logits (B, V) after `prefix` (P,) then each row's suffix: `suffixes` (B, S) is
        right-padded, row b's last real token at `lengths[b] - 1`; with `all_logits`, (B, S,
        V) at every suffix position. The prefix runs once per distinct prefix and its cache
        is copied into every row; right padding is harmless because causal attention never
        looks forward."""
        P, (B, S) = len(prefix), suffixes.shape
        if self._prefix is None or not torch.equal(self._prefix[0], prefix):
            self.model.allocate_cache(1, P + S)
            self.model(prefix.to(self.device)[None], 0, None)
            self._prefix = (prefix.clone(), self.model.cache_prefix(P))
        batch, max_len = self.model.cache_shape
        if batch != B or max_len < P + S:
            self.model.allocate_cache(B, P + S)
        self.model.load_cache_prefix(self._prefix[1])
        self.length, self.pad = 0, None
        if all_logits:
            return self.model(suffixes.to(self.device), P, None, all_logits=True)
        return self.model(suffixes.to(self.device), P, None,
                          last=(lengths - 1).to(self.device))


@dataclass(frozen=True)
class Sampling:
    """Temperature / top-k / top-p sampling with its own seeded generator."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")

    def sample(self, logits: Tensor, generator: torch.Generator) -> Tensor:
        logits = logits.float() / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            drop = probs.cumsum(-1) - probs >= self.top_p  # keeps the token that crosses p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = logits.softmax(-1)
        return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0]


@dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per row, stop token/sequence included
    finish_reasons: list[str]  # "stop_token", "stop_sequence" or "length"
    nonfinite: list[tuple[int, int]]  # (step, row) whose logits held NaN or Inf


def generate(engine, input_ids: Tensor, attention_mask: Tensor | None,
             max_new_tokens: int, *, sampling: Sampling | None = None,
             stop_tokens: Sequence[int] = (), stop_sequences: Sequence[str] = (),
             detokenize: Callable[[list[int]], str] | None = None,
             ignore_eos: bool = False) -> Generation:
    """Greedy (or sampled) generation; each row stops on its own.

    `engine` is an `Engine` or anything with its prefill / decode / reset / reserve (the
    harness's runners).
    `stop_sequences` are strings matched in the decoded new text (needs `detokenize`).
    `ignore_eos` generates exactly `max_new_tokens` per row (fixed-length runs for perf).
    """
    if stop_sequences and detokenize is None:
        raise ValueError("stop_sequences need a detokenize function")
    generator = torch.Generator().manual_seed(sampling.seed) if sampling else None
    B = input_ids.shape[0]
    tokens: list[list[int]] = [[] for _ in range(B)]
    reasons = ["length"] * B
    nonfinite = []
    engine.reserve(max_new_tokens)
    logits = engine.prefill(input_ids, attention_mask)
    for step in range(max_new_tokens):
        bad_rows = (~torch.isfinite(logits).all(-1)).nonzero().flatten().tolist()
        nonfinite += [(step, row) for row in bad_rows if reasons[row] == "length"]
        next_ids = (sampling.sample(logits, generator) if sampling
                    else logits.argmax(-1)).cpu()
        for row, token in enumerate(next_ids.tolist()):
            if reasons[row] != "length":
                continue  # finished rows are carried along but ignored
            tokens[row].append(token)
            if ignore_eos:
                continue
            if token in stop_tokens:
                reasons[row] = "stop_token"
            elif stop_sequences and any(s in detokenize(tokens[row]) for s in stop_sequences):
                reasons[row] = "stop_sequence"
        if all(r != "length" for r in reasons) or step == max_new_tokens - 1:
            break
        logits = engine.decode(next_ids)
    engine.reset()
    return Generation(tokens, reasons, nonfinite)

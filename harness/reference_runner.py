"""`transformers` as a runner: the CPU reference every suite compares with (fp32 is the
ground truth; other precisions measure how far the reference itself drifts), and the
`RunnerConfig` read off a transformers model's config."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from harness.reference import fake_quantize_, load_reference
from harness.runners import right_padded
from models.engine import Generation, left_padding
from models.precision import FP32, Precision
from models.transformer import weight_bytes


@dataclass(frozen=True)
class PortConfig:
    """A `RunnerConfig` read off a transformers model's config."""

    vocab_size: int
    max_positions: int | None
    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config) -> PortConfig:
        heads = config.num_attention_heads
        # Multi-query families (Falcon, GPTBigCode) say so instead of counting KV heads.
        kv_heads = (1 if getattr(config, "multi_query", False) and not getattr(
            config, "new_decoder_architecture", False) else getattr(
            config, "num_key_value_heads", None) or getattr(config, "num_kv_heads", None)
            or heads)
        # Older remote code (GPT-2 style names) calls it n_positions or seq_length.
        positions = next((getattr(config, name) for name in
                          ("max_position_embeddings", "n_positions", "seq_length")
                          if getattr(config, name, None)), None)
        return cls(config.vocab_size, positions, config.num_hidden_layers, kv_heads,
                   getattr(config, "head_dim", None) or config.hidden_size // heads)


class ReferenceRunner:
    """`transformers` on the CPU, fed exactly as `generate` feeds it.

    Left padding is handled the HuggingFace way: positions count from each row's first real
    token and the 2D attention mask grows by one column per decoded token. An int8 precision
    is simulated in floating point (`fake_quantize_`), on the LM head too if `lm_head`.
    """

    world_size = 1

    def __init__(self, checkpoint: str | Path, precision: Precision = FP32,
                 lm_head: bool = False):
        self.precision = precision
        model = load_reference(checkpoint, precision.dtype)
        if precision.scheme:
            fake_quantize_(model, precision.scheme, lm_head)
        self._attach(model, torch.device("cpu"))

    def _attach(self, model, device: torch.device) -> None:
        """Run `model` (loaded on `device`): what its forward takes, read once."""
        self.model, self.device = model, device
        self.config = PortConfig.of(model.config)
        parameters = inspect.signature(model.forward).parameters
        # BLOOM has no position ids (ALiBi reads positions off the mask).
        self._takes_positions = "position_ids" in parameters
        # Remote code written for older transformers may not take logits_to_keep.
        self._takes_keep = "logits_to_keep" in parameters
        self.reset()

    def _forward(self, ids: Tensor, positions: Tensor, keep: int) -> Tensor:
        """Logits of the last `keep` positions (0: all), float32 on the CPU."""
        extra = {"position_ids": positions.to(self.device)} if self._takes_positions else {}
        if self._takes_keep:
            extra["logits_to_keep"] = keep
        out = self.model(input_ids=ids.to(self.device), attention_mask=self.mask.to(self.device),
                         past_key_values=self.past, use_cache=True, **extra)
        self.past = out.past_key_values
        logits = out.logits if keep == 0 else out.logits[:, -keep:]
        return logits.float().cpu()

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

    def release(self) -> None:
        """Drop the cache (transformers' dynamic cache is allocated per prefill anyway)."""
        self.reset()

    def prefill_shared(self, prefix, suffixes, all_logits=False):
        """Each row whole (prefix + suffix), left-padded: transformers as lm-eval runs it.
        Every suffix position's logits (cloze) come from the prefix's cache, repeated into
        each row (transformers' own `batch_repeat_interleave`), where the model's cache has
        it: the four choices of a question then cost about one question, not four."""
        if all_logits and len(prefix):
            with torch.inference_mode():
                logits = self._continuations(prefix, suffixes)
            if logits is not None:
                return logits
        rows = [torch.cat([prefix, suffix]) for suffix in suffixes]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
        logits = self.prefill(ids, mask, all_logits)
        if not all_logits:
            return logits
        padded = torch.zeros(len(rows), max(len(s) for s in suffixes), logits.shape[-1])
        for i, suffix in enumerate(suffixes):  # right-aligned rows to right-padded suffixes
            padded[i, : len(suffix)] = logits[i, width - len(suffix):]
        return padded

    def _continuations(self, prefix: Tensor, suffixes: list[Tensor]) -> Tensor | None:
        """(B, S, V) from the prefix's cache; None where the cache cannot be repeated."""
        self.reset()
        P = len(prefix)
        self.mask = torch.ones(1, P, dtype=torch.long)
        self._forward(prefix[None], torch.arange(P)[None], keep=1)
        if not hasattr(self.past, "batch_repeat_interleave"):  # an older remote-code cache
            self.reset()
            return None
        padded, _ = right_padded(suffixes)
        B, S = padded.shape
        self.past.batch_repeat_interleave(B)
        self.mask = torch.ones(B, P + S, dtype=torch.long)
        logits = self._forward(padded, (P + torch.arange(S)).expand(B, S), keep=0)
        self.reset()  # right-padded rows: nothing to decode after them
        return logits

    @torch.inference_mode()
    def generate(self, input_ids, attention_mask, new_tokens):
        """transformers' own `generate`, greedy; EOS cannot end a row before `new_tokens`
        (min_new_tokens), so the pad id is never written and any will do."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        device = self.model.device
        out = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            pad_token_id=0)
        return Generation(out[:, input_ids.shape[1]:].tolist(), ["length"] * len(input_ids),
                          [])

    def weight_bytes(self) -> int:
        return weight_bytes(self.model)

    def streamed_weight_bytes(self) -> int:
        """All but an input embedding table the LM head does not share."""
        embedding = self.model.get_input_embeddings()
        head = self.model.get_output_embeddings()
        shared = head is not None and head.weight is embedding.weight
        return weight_bytes(self.model) - (0 if shared else weight_bytes(embedding))

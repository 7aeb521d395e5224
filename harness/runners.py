"""The one interface every suite drives, and the two runners of this repository.

`Runner` is the contract a port implements (see its docstring). `PortedRunner` runs the
ported engine (`models/`) on any backend and precision; `ReferenceRunner` runs `transformers`
on the CPU (fp32 is the ground truth; other precisions measure how far the reference itself
drifts). `harness.tp.TensorParallelRunner` and `harness.ports.hf.HFRunner` are runners too.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from harness.devices import Backend, get_backend
from harness.reference import fake_quantize_, load_reference
from models.engine import Engine, Generation, generate, left_padding
from models.loading import build_model
from models.precision import FP32, Precision
from models.transformer import streamed_weight_bytes, weight_bytes


class RunnerConfig(Protocol):
    """The model structure a suite needs. `models.config.ModelConfig` is one."""

    vocab_size: int  # logits' last dimension
    max_positions: int | None  # longest prompt + new tokens accepted; None: unknown
    num_layers: int  # with num_kv_heads and head_dim: the KV cache's bytes per token
    num_kv_heads: int
    head_dim: int


class Runner(Protocol):
    """What the numerics, perf and accuracy suites drive; implement it to test your own port.

    Token ids are int64 tensors. A batch is left-padded: `attention_mask` (B, T) is 0 on the
    padding at the start of a row and 1 on its tokens; positions count from each row's first
    real token, as transformers' `generate` does. Logits are returned per row, in float32 on
    the CPU (a runner may return them on its device, as the perf loop asks of ours with
    `device_logits`, since it picks tokens there). A runner keeps one batch's state (the KV
    cache) between `prefill` and the `decode`s that follow it.

    What it returns is checked where the suites receive it (`harness.seam`): logits are a
    floating `torch.Tensor` of the model's vocabulary width, one row per sequence.

    Attributes:
      config      a `RunnerConfig`: vocabulary, longest sequence, layers and KV heads.
      precision   the `models.precision.Precision` it computes in (the case's dtype).
      world_size  processes the model is split over (1 unless tensor parallel).
      generates_by_decode  optional, True where `generate` is the greedy loop over this
                  runner's own `prefill`/`decode` (`models.engine.generate`): the greedy check
                  then runs that loop once instead of comparing `generate` as a second path.
      model       optional, the `torch.nn.Module` that `prefill`/`decode` run: a transformers
                  model or a `models.transformer.DecoderLM` (a module list of decoder layers,
                  each with an attention and an MLP sub-block). A failing numerics case is then
                  re-run with hooks on it to name the first layer and block that diverge
                  (`harness.numerics.layers`); without it the case says it was not localized.
    """

    config: RunnerConfig
    precision: Precision
    world_size: int

    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                all_logits: bool = False) -> Tensor:
        """Start a batch: ids (B, T), mask (B, T) or None (no padding). Logits (B, V) of the
        last position, or (B, T, V) of every position with all_logits."""

    def decode(self, next_ids: Tensor) -> Tensor:
        """Append one token per row, ids (B,); logits (B, V) of that new position."""

    def reset(self) -> None:
        """Forget the batch (the next call is a prefill); memory may stay allocated."""

    def reserve(self, new_tokens: int) -> None:
        """Make room for `new_tokens` decode steps after the next prefill (a hint)."""

    def release(self) -> None:
        """Free the batch's memory (KV cache): after an out-of-memory error, between sizes."""

    def prefill_shared(self, prefix: Tensor, suffixes: list[Tensor],
                       all_logits: bool = False) -> Tensor:
        """Logits (B, V) at the end of prefix (P,) + suffixes[b] (1-D, lengths may differ),
        for each row b: multiple-choice scoring, where every choice shares the question.
        With `all_logits`, (B, S, V) at every position of each suffix, S the longest (a row's
        positions past its own length are padding): cloze scoring, where each choice's
        text continues the question. A `decode` does not follow it."""

    def generate(self, input_ids: Tensor, attention_mask: Tensor | None,
                 new_tokens: int) -> Generation:
        """Greedy generation of exactly `new_tokens` per row (EOS ignored), the port's own way
        (its serving loop, or transformers' `generate`): `Generation.tokens` [B][new_tokens],
        and `nonfinite`, the (step, row) whose logits held NaN or Inf, where known."""

    def weight_bytes(self) -> int:
        """Bytes of the weights this process holds (its slice under tensor parallelism)."""

    def streamed_weight_bytes(self) -> int:
        """Bytes of those a decode step reads (embedding tables only gathered are not)."""


@runtime_checkable
class Closable(Protocol):
    """A runner holding what garbage collection does not free (tensor-parallel ranks, a
    server it started): the pool calls `close` when it lets the runner go."""

    def close(self) -> None: ...


@runtime_checkable
class CompletesText(Protocol):
    """A runner that completes text prompts itself, stop sequences and sampling included
    (its own requests and sampler): HumanEval then sends it text, not token ids."""

    def complete_text(self, prompts: list[str], max_new_tokens: int, stop: list[str],
                      temperature: float = 0.0, seed: int | None = None) -> list:
        """(completion text, finish reason) per prompt."""


@runtime_checkable
class Served(CompletesText, Protocol):
    """A port behind a server (`harness.ports.served.ServedRunner`): it completes text itself,
    lists the top-K log-probabilities of an echoed prompt and says what served it; it has no
    step-by-step `decode`, so the suites run its own checks instead."""

    def prompt_topk(self, text: str) -> tuple: ...

    def describe(self) -> dict: ...


def right_padded(suffixes: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Suffixes as one zero-padded (B, max length) batch and their lengths (B,)."""
    lengths = torch.tensor([len(s) for s in suffixes])
    padded = torch.zeros(len(suffixes), int(lengths.max()), dtype=torch.long)
    for row, suffix in enumerate(suffixes):
        padded[row, : len(suffix)] = suffix
    return padded, lengths


class PortedRunner:
    """The ported model on a device; device work is synchronised before logits return."""

    world_size = 1
    generates_by_decode = True  # `generate` is the harness's loop over prefill/decode

    def __init__(self, checkpoint: str | Path, precision: Precision = FP32, *,
                 hardware: str | Backend = "cpu", headroom: int = 256, compile: bool = False,
                 device_logits: bool = False, lm_head: bool = False, cpu_dense: bool = True):
        """precision: its int8 scheme quantizes the model (from its float32 weights; the LM
        head too if `lm_head`), unless the checkpoint is quantized already, with that scheme.
        device_logits: return logits on the device in the model dtype (the perf loop picks
        tokens there, as a serving loop would) instead of float32 on the CPU.
        cpu_dense: on the CPU, run the float dense layers on faster kernels (`build_model`)."""
        self.backend = get_backend(hardware) if isinstance(hardware, str) else hardware
        self.precision, self.device_logits = precision, device_logits
        self.model = build_model(checkpoint, precision, lm_head=lm_head,
                                 device=self.backend.torch_device(), cpu_dense=cpu_dense)
        self.engine = Engine(self.model, headroom=headroom, compile=compile)

    @property
    def config(self):
        return self.model.config

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

    def prefill_shared(self, prefix, suffixes, all_logits=False):
        """The prefix runs once (and once per distinct prefix, across calls); its cache is
        copied into every row."""
        return self._out(self.engine.prefill_shared(prefix, *right_padded(suffixes),
                                                    all_logits=all_logits))

    def release(self) -> None:
        """Free the KV cache (the next prefill allocates a new one)."""
        self.engine.release()

    def generate(self, input_ids, attention_mask, new_tokens):
        return generate(self.engine, input_ids, attention_mask, new_tokens, ignore_eos=True)

    def weight_bytes(self) -> int:
        return weight_bytes(self.model)

    def streamed_weight_bytes(self) -> int:
        return streamed_weight_bytes(self.model)


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
        self.model = load_reference(checkpoint, precision.dtype)
        if precision.scheme:
            fake_quantize_(self.model, precision.scheme, lm_head)
        self.config = PortConfig.of(self.model.config)
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

"""The one interface every suite drives, and the capabilities a runner may declare beside it.

`Runner` is the contract a port implements (see its docstring). The runners themselves live
with the ports (`harness.ports`: the engine's, an hf directory's, a server's, tensor
parallel's) and, for the transformers reference, in `harness.reference_runner`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from models.engine import Generation
from models.precision import Precision


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

    Optional capabilities, each a runtime-checkable protocol below that a runner declares by
    having it: `GeneratesByDecode` (`generates_by_decode`), `ExposesModule` (`model`: a
    transformers model or a `models.transformer.DecoderLM`, a module list of decoder layers
    each with an attention and an MLP sub-block; without it a failing case says it was not
    localized), `RecordsLayers`, `Closable`, `CompletesText` and `Served`.
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


@runtime_checkable
class GeneratesByDecode(Protocol):
    """A runner that declares whether its `generate` is the greedy loop over its own
    `prefill`/`decode` (`models.engine.generate`): where True, the greedy check runs that loop
    once instead of comparing `generate` as a second path."""

    generates_by_decode: bool


@runtime_checkable
class ExposesModule(Protocol):
    """A runner that names the `torch.nn.Module` its `prefill`/`decode` run (a transformers
    model or a `models.transformer.DecoderLM`): a failing numerics case is re-run with hooks
    on it to name the first layer and block that diverge (`harness.numerics.layers`)."""

    model: object  # a torch.nn.Module; checked where the hooks are placed


@runtime_checkable
class RecordsLayers(Protocol):
    """A runner split over processes that records each rank's hook values itself
    (`harness.tp.TensorParallelRunner`) and gathers them on rank 0."""

    def recording(self, row: int): ...


def right_padded(suffixes: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Suffixes as one zero-padded (B, max length) batch and their lengths (B,)."""
    lengths = torch.tensor([len(s) for s in suffixes])
    padded = torch.zeros(len(suffixes), int(lengths.max()), dtype=torch.long)
    for row, suffix in enumerate(suffixes):
        padded[row, : len(suffix)] = suffix
    return padded, lengths

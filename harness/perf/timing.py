"""The timing loop: one request of `batch` prompts, driven phase by phase through a runner.

The harness runs prefill and every decode step itself (never `generate`), so each phase is
timed on its own with the device backend's timer (synchronised; device events on cuda/npu):

  tokenize     the prompts -> token ids (exactly `in` tokens per row) -> tensors on the device
  first token  prefill + pick the first new token (greedy)
  decode step  one decode + pick the next token, for each of the `out - 1` later tokens
  pre          per decode step: build the step's input (the picked ids, on the device)
  post         per new token: detokenise it (streaming text), for all `out` tokens

The output length is fixed (EOS is ignored) and the prompts are real text through the model's
tokenizer, so the tokenizer's cost is real. Warm-up requests are run first and not kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.devices import Backend
from harness.prompts import prompt_string
from harness.runners import Runner
from harness.stats import describe


@dataclass
class Samples:
    """Every sample of every measured request (one list entry per repeat)."""

    response_s: list[float] = field(default_factory=list)
    tokenize_ms: list[float] = field(default_factory=list)
    first_token_ms: list[float] = field(default_factory=list)
    decode_ms: list[list[float]] = field(default_factory=list)  # per repeat, per step
    pre_ms: list[list[float]] = field(default_factory=list)
    post_ms: list[list[float]] = field(default_factory=list)

    def per_repeat_mean(self, name: str) -> list[float]:
        return [sum(steps) / len(steps) if steps else 0.0 for steps in getattr(self, name)]

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def prompts(tokenizer, batch: int, length: int) -> list[str]:
    """`batch` different texts, each exactly `length` tokens for this tokenizer."""
    return [prompt_string(tokenizer, length, offset=97 * row) for row in range(batch)]


def run_request(runner: Runner, tokenizer, backend: Backend, texts: list[str], in_len: int,
                out_len: int, samples: Samples | None) -> list[str]:
    """One timed request; appends to `samples` (None: a warm-up). Returns the new text."""
    timer, device = backend.timer, backend.torch_device()
    decode_ms, pre_ms, post_ms, pieces = [], [], [], [[] for _ in texts]

    def detokenize(ids: torch.Tensor) -> None:
        with timer() as t:
            for row, text in enumerate(tokenizer.batch_decode(ids.cpu()[:, None])):
                pieces[row].append(text)
        post_ms.append(t.ms)

    runner.reserve(out_len)
    with timer() as total:
        with timer() as t_tokenize:
            encoded = tokenizer(texts, truncation=True, max_length=in_len, return_tensors="pt")
            ids = encoded.input_ids.to(device)
        if ids.shape != (len(texts), in_len):
            raise ValueError(f"the prompts tokenised to {tuple(ids.shape)}, expected "
                             f"{(len(texts), in_len)}")
        with timer() as t_first:
            next_ids = runner.prefill(ids).argmax(-1)
        detokenize(next_ids)
        for _ in range(out_len - 1):
            with timer() as t_pre:
                step_ids = next_ids.to(device).view(-1)
            with timer() as t_step:
                next_ids = runner.decode(step_ids).argmax(-1)
            pre_ms.append(t_pre.ms)
            decode_ms.append(t_step.ms)
            detokenize(next_ids)
    runner.reset()
    if samples is not None:
        samples.response_s.append(total.ms / 1e3)
        samples.tokenize_ms.append(t_tokenize.ms)
        samples.first_token_ms.append(t_first.ms)
        samples.decode_ms.append(decode_ms)
        samples.pre_ms.append(pre_ms)
        samples.post_ms.append(post_ms)
    return ["".join(p) for p in pieces]


def measure(runner: Runner, tokenizer, backend: Backend, batch: int, in_len: int, out_len: int,
            repeats: int, warmup: int) -> Samples:
    """`warmup` unrecorded requests, then `repeats` measured ones."""
    texts = prompts(tokenizer, batch, in_len)
    samples = Samples()
    for _ in range(warmup):
        run_request(runner, tokenizer, backend, texts, in_len, out_len, None)
    for _ in range(repeats):
        run_request(runner, tokenizer, backend, texts, in_len, out_len, samples)
    return samples


SEED_COLUMNS = ("batch_size", "input_seq_len(Encoding)", "output_seq_len(Decoding)",
                "ResponseTime(s)", "forward_first_token_time(ms)", "forward_next_token_time(ms)",
                "pre_next_token_time(ms)", "post_next_token_time_post(ms)")


def seed_row(samples: Samples, batch: int, in_len: int, out_len: int) -> dict:
    """The source documents' columns, each the median over repeats of that repeat's value
    (a mean per decode step where the column is per step)."""
    def median(values):
        return describe(values)["median"]

    return dict(zip(SEED_COLUMNS, (
        batch, in_len, out_len, median(samples.response_s), median(samples.first_token_ms),
        median(samples.per_repeat_mean("decode_ms")), median(samples.per_repeat_mean("pre_ms")),
        median(samples.per_repeat_mean("post_ms")))))


def summary(samples: Samples, batch: int, in_len: int, out_len: int) -> dict:
    """Seed columns first, then throughput and the spread of every phase."""
    row = seed_row(samples, batch, in_len, out_len)
    next_ms = row["forward_next_token_time(ms)"]
    row["e2e_throughput_tokens_per_s"] = batch * out_len / row["ResponseTime(s)"]
    row["decode_tokens_per_s"] = batch / next_ms * 1e3 if next_ms else float("nan")
    all_steps = [ms for steps in samples.decode_ms for ms in steps]
    for name, values in (("first_token_ms", samples.first_token_ms),
                         ("next_token_ms", samples.per_repeat_mean("decode_ms")),
                         ("decode_step_ms", all_steps), ("tokenize_ms", samples.tokenize_ms),
                         ("response_s", samples.response_s)):
        for stat, value in describe(values).items():
            row[f"{name}_{stat}"] = value
    return row

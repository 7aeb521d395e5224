"""A runner without a model, for the harness's own tests and benchmarks (lm-eval's `DummyLM`).

It satisfies the `harness.runners.Runner` contract, so the numerics, perf and accuracy logic
runs on it exactly as on a port.
"""

from __future__ import annotations

import random
import time

import torch
from torch import Tensor

from harness.reference_runner import PortConfig
from models.engine import Generation
from models.precision import FP32


class DummyRunner:
    """Logits of width `vocab`: with `pattern`, one-hot (times 5) of (last token * 3 + steps
    fed) % vocab, plus `noise`, so that runners fed alike agree (up to their noise); without,
    ready zeros (what a step of no cost returns).

    ms: the cost of each prefill and decode step (+-5% jitter, seeded), added to a virtual
    `clock` (anything with a `now` in ms) or, without one, slept. oom_from_batch: a prefill
    of that many rows or more raises the CPU allocator's out-of-memory error. `fed` holds the
    tokens fed since the last prefill, `calls` every (call, input shape).
    """

    precision = FP32
    world_size = 1

    def __init__(self, vocab: int = 11, *, pattern: bool = True, noise: float = 0.0,
                 ms: float = 0.0, clock=None, seed: int = 0, oom_from_batch: int | None = None,
                 weight_bytes: int = 2**20):
        self.vocab, self.pattern, self.noise = vocab, pattern, noise
        self.ms, self.clock, self.oom_from_batch = ms, clock, oom_from_batch
        self.config = PortConfig(vocab, None, num_layers=2, num_kv_heads=1, head_dim=16)
        self._weight_bytes = weight_bytes
        self.jitter = random.Random(seed)
        self.fed: list[Tensor] = []
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        self._zeros: dict[int, Tensor] = {}

    def _logits(self, last: Tensor) -> Tensor:
        if self.ms:
            cost = self.ms * (1 + self.jitter.uniform(-0.05, 0.05))
            if self.clock is None:
                time.sleep(cost / 1e3)
            else:
                self.clock.now += cost
        if not self.pattern:
            batch = len(last)
            if batch not in self._zeros:
                self._zeros[batch] = torch.zeros(batch, self.vocab)
            return self._zeros[batch]
        base = torch.nn.functional.one_hot((last * 3 + len(self.fed)) % self.vocab, self.vocab)
        return base.float() * 5 + self.noise

    def prefill(self, input_ids, attention_mask=None, all_logits=False):
        if self.oom_from_batch and len(input_ids) >= self.oom_from_batch:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                               "allocate 123 bytes")
        self.calls.append(("prefill", tuple(input_ids.shape)))
        self.fed = [input_ids[:, -1]]
        return self._logits(input_ids[:, -1])

    def decode(self, next_ids):
        self.calls.append(("decode", tuple(next_ids.shape)))
        self.fed.append(next_ids)
        return self._logits(next_ids)

    def reset(self):
        self.fed = []

    def reserve(self, new_tokens):
        pass

    def release(self):
        self.reset()

    def prefill_shared(self, prefix, suffixes, all_logits=False):
        """Logits after each row's last token (all this runner's logits depend on); with
        all_logits, after each suffix token (right-padded with zeros)."""
        if all_logits:
            from harness.runners import right_padded

            padded, _ = right_padded(suffixes)
            return torch.stack([self._logits(padded[:, t]) for t in range(padded.shape[1])], 1)
        return self.prefill(torch.stack([torch.cat([prefix, s])[-1:] for s in suffixes]))

    def generate(self, input_ids, attention_mask, new_tokens):
        tokens = [self.prefill(input_ids, attention_mask).argmax(-1)]
        for _ in range(new_tokens - 1):
            tokens.append(self.decode(tokens[-1]).argmax(-1))
        rows = torch.stack(tokens, dim=1).tolist() if new_tokens else [[] for _ in input_ids]
        return Generation(rows, ["length"] * len(input_ids), [])

    def weight_bytes(self) -> int:
        return self._weight_bytes

    def streamed_weight_bytes(self) -> int:
        return self._weight_bytes

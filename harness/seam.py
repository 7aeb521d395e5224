"""The seam between the harness and a port: what a runner hands back is checked as it crosses.

A port's logits feed comparisons that assume a CPU-or-device `torch.Tensor` of floats, one
row per sequence and one column per token of the model's vocabulary. A port that breaks
that (a padded LM head, 1-D logits, a NumPy array, a factory that returns nothing) would
otherwise fail deep inside a comparison with an error that names neither the port nor the
shape; here it fails the case in one line. The checks read only a tensor's metadata (type,
shape, dtype), so they cost no device synchronisation and wrap the engine too.
"""

from __future__ import annotations

import pytest
import torch

# What a runner must have to be driven by the suites (the `harness.runners.Runner` methods).
RUNNER_METHODS = ("prefill", "decode", "reset", "reserve", "release", "prefill_shared",
                  "generate", "weight_bytes", "streamed_weight_bytes")


def port_error(message: str):
    """Fail the case with `message` alone: the port broke the contract, a check failed."""
    pytest.fail(message, pytrace=False)


def check_factory_result(runner, factory: str):
    """The runner a plug-in factory built, if it is one: the Runner methods and a config
    with an integer vocab_size. `factory` names it for the message (`factory m:make`)."""
    missing = [name for name in RUNNER_METHODS if not callable(getattr(runner, name, None))]
    what = type(runner).__name__
    if len(missing) == len(RUNNER_METHODS):
        port_error(f"{factory} returned {what}, not a Runner")
    if missing:
        port_error(f"{factory} returned {what}, not a Runner (no {', '.join(missing)})")
    vocab = getattr(getattr(runner, "config", None), "vocab_size", None)
    if not isinstance(vocab, int) or isinstance(vocab, bool):
        port_error(f"{factory} returned {what}, whose config has no integer vocab_size "
                   f"(found {vocab!r})")
    return runner


def _type_name(value) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__.partition('.')[0]}.{kind.__qualname__}"


def check_logits(logits, expected: tuple[int, ...]):
    """`logits` if they are a floating torch.Tensor of shape `expected`."""
    shape = "(" + ", ".join(map(str, expected)) + ")"
    if not isinstance(logits, torch.Tensor):
        port_error(f"port returned logits of type {_type_name(logits)}; expected a "
                   f"torch.Tensor {shape}")
    if tuple(logits.shape) != expected:
        port_error(f"port returned logits {tuple(logits.shape)}; expected {shape}")
    if not logits.is_floating_point():
        port_error(f"port returned logits of dtype {logits.dtype}; expected a floating dtype")
    return logits


def _own(tensor):
    """A copy of an input for the port: what the harness keeps (the reference's tokens and
    masks, reused by every later case) must not change if a port writes into its inputs."""
    return tensor.clone() if isinstance(tensor, torch.Tensor) else tensor


class CheckedRunner:
    """A port whose logits are checked against the model's vocabulary as they are returned,
    and which is handed copies of its inputs (ids and masks are small).

    Everything else (attributes, `served`, `describe`, `close`, ...) is the port's own, so
    suites probe it as they would the port."""

    def __init__(self, runner, vocab_size: int):
        """vocab_size: the model's (as registered), not what the port's config claims."""
        self._port, self._vocab = runner, vocab_size

    def __getattr__(self, name: str):  # only called for what the wrapper does not define
        return getattr(self._port, name)

    @property
    def port(self):
        """The port itself, unwrapped."""
        return self._port

    def prefill(self, input_ids, attention_mask=None, all_logits=False):
        logits = self._port.prefill(_own(input_ids), _own(attention_mask),
                                    all_logits=all_logits)
        rows, length = input_ids.shape
        return check_logits(logits, (rows, length, self._vocab) if all_logits
                            else (rows, self._vocab))

    def decode(self, next_ids):
        return check_logits(self._port.decode(_own(next_ids)), (len(next_ids), self._vocab))

    def prefill_shared(self, prefix, suffixes, all_logits=False):
        logits = self._port.prefill_shared(_own(prefix), [_own(s) for s in suffixes],
                                           all_logits=all_logits)
        longest = max(len(s) for s in suffixes)
        return check_logits(logits, (len(suffixes), longest, self._vocab) if all_logits
                            else (len(suffixes), self._vocab))

    def generate(self, input_ids, attention_mask, new_tokens):
        generation = self._port.generate(_own(input_ids), _own(attention_mask), new_tokens)
        rows = getattr(generation, "tokens", None)
        if not isinstance(rows, list) or len(rows) != len(input_ids):
            found = f"{len(rows)} rows of tokens" if isinstance(rows, list) else "no tokens list"
            port_error(f"port's generate returned {_type_name(generation)} with {found}; "
                       f"expected a Generation of {len(input_ids)} rows")
        return generation

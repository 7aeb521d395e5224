"""Plug-in ports as a team would write them: subclasses of the transformers reference, each
with one fault the numerics gates must catch (and one honest port, which must pass).

Each factory is named for its port (`--port MODEL=tests.team_ports:zero_logits`); the case
id's port token is the factory's name.
"""

import torch

from harness.reference_runner import ReferenceRunner
from models.engine import Generation


class IgnoresDecodeInput(ReferenceRunner):
    """Continues with its own greedy choice whatever token `decode` is given."""

    def prefill(self, input_ids, attention_mask=None, all_logits=False):
        logits = super().prefill(input_ids, attention_mask, all_logits)
        self.own_choice = logits[:, -1].argmax(-1) if all_logits else logits.argmax(-1)
        return logits

    def decode(self, next_ids):
        logits = super().decode(self.own_choice)
        self.own_choice = logits.argmax(-1)
        return logits


class IgnoresAttentionMask(ReferenceRunner):
    """Attends to the padding: every row is taken as all real tokens."""

    def prefill(self, input_ids, attention_mask=None, all_logits=False):
        return super().prefill(input_ids, None, all_logits)


class StaleDecodePosition(ReferenceRunner):
    """The classic KV-cache port bug: each decoded token is given the previous token's
    position (the prefill is right)."""

    def decode(self, next_ids):
        self.next_position = self.next_position - 1
        logits = super().decode(next_ids)
        self.next_position = self.next_position + 1
        return logits


class ClobbersInputs(ReferenceRunner):
    """Ignores padding by overwriting the mask it is given, and writes its own greedy choice
    into the token tensor it is fed: both in place, into the caller's tensors."""

    def prefill(self, input_ids, attention_mask=None, all_logits=False):
        if attention_mask is not None:
            attention_mask.fill_(1)
        return super().prefill(input_ids, attention_mask, all_logits)

    def decode(self, next_ids):
        logits = super().decode(next_ids)
        next_ids.copy_(logits.argmax(-1))
        return logits


class ReturnsOther(ReferenceRunner):
    """Honest computation, broken output: `change` is applied to every logits tensor
    `prefill` and `decode` return. `generate` stays transformers' own, and correct."""

    change = staticmethod(lambda logits: logits)

    def prefill(self, input_ids, attention_mask=None, all_logits=False):
        return self.change(super().prefill(input_ids, attention_mask, all_logits))

    def decode(self, next_ids):
        return self.change(super().decode(next_ids))


class ZeroLogits(ReturnsOther):
    change = staticmethod(torch.zeros_like)


class NaNLogits(ReturnsOther):
    change = staticmethod(lambda logits: torch.full_like(logits, float("nan")))


class WideLogits(ReturnsOther):
    """An LM head padded by 64 columns, returned unsliced."""
    change = staticmethod(lambda logits: torch.nn.functional.pad(logits, (0, 64)))


class FlatLogits(ReturnsOther):
    """Only the first row's logits, as a 1-D tensor."""
    change = staticmethod(lambda logits: logits[0])


class NumpyLogits(ReturnsOther):
    change = staticmethod(lambda logits: logits.numpy())


class ZeroTokensGenerate(ReferenceRunner):
    """Correct prefill/decode; its own `generate` (a separate serving loop) answers token 0."""

    def generate(self, input_ids, attention_mask, new_tokens):
        return Generation([[0] * new_tokens for _ in input_ids], ["length"] * len(input_ids),
                          [])


class StopsEarlyGenerate(ReferenceRunner):
    """Its own `generate` ends every row after 5 tokens and gives no finish reason."""

    def generate(self, input_ids, attention_mask, new_tokens):
        done = super().generate(input_ids, attention_mask, new_tokens)
        return Generation([row[:5] for row in done.tokens], [""] * len(input_ids), [])


def _factory(runner_class):
    def make(path, *, model, precision, hardware):
        return runner_class(path, precision)
    return make


honest = _factory(ReferenceRunner)
ignores_input = _factory(IgnoresDecodeInput)
ignores_mask = _factory(IgnoresAttentionMask)
stale_position = _factory(StaleDecodePosition)
clobbers_inputs = _factory(ClobbersInputs)
zero_logits = _factory(ZeroLogits)
nan_logits = _factory(NaNLogits)
wide_logits = _factory(WideLogits)
flat_logits = _factory(FlatLogits)
numpy_logits = _factory(NumpyLogits)
zero_generate = _factory(ZeroTokensGenerate)
stops_early = _factory(StopsEarlyGenerate)


def returns_none(path, *, model, precision, hardware):
    """Forgets to return the runner it built."""
    ReferenceRunner(path, precision)

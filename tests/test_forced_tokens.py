"""Which tokens teacher forcing feeds: likely ones the reference would not choose itself, so
a port that ignores the token it is fed cannot match the reference (dummy runners)."""

import torch

from harness.numerics.teacher_forced import (
    load_thresholds,
    runner_up_tokens,
    stats_against_reference,
    teacher_forced,
)
from harness.testing import DummyRunner


class RandomLogits(DummyRunner):
    """Logits drawn from the last token fed and the step: no ties, a different order each time."""

    def _logits(self, last):
        return torch.stack([torch.randn(self.vocab, generator=torch.Generator().manual_seed(
            int(token) * 1009 + len(self.fed))) for token in last])


class FeedsItself(RandomLogits):
    """Continues with its own greedy choice, whatever `decode` is given."""

    def prefill(self, input_ids, attention_mask=None, all_logits=False):
        self.last = super().prefill(input_ids, attention_mask)
        return self.last

    def decode(self, next_ids):
        self.last = super().decode(self.last.argmax(-1))
        return self.last


IDS = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])


def test_forced_tokens_are_the_reference_runner_up_never_its_choice():
    reference = RandomLogits(vocab=50)
    history, tokens = teacher_forced(reference, [], IDS, None, steps=12)
    for (logits,), fed in zip(history, tokens):
        assert torch.equal(fed, logits.topk(2, dim=-1).indices[:, 1])
        assert not (fed == logits.argmax(-1)).any()


def test_tied_maxima_never_force_the_greedy_choice():
    tied = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    assert not (runner_up_tokens(tied) == tied.argmax(-1)).any()
    assert runner_up_tokens(tied)[0] == 2


def test_a_runner_that_ignores_its_decode_input_differs_at_every_step():
    history, _ = teacher_forced(RandomLogits(vocab=50), [FeedsItself(vocab=50)], IDS, None,
                                steps=6)
    first_decode = history[1]
    assert (first_decode[0] - first_decode[1]).abs().amax(-1).min() > 0.1  # every row
    for reference, port in history[1:]:
        # Later, its own choice may happen to be the token forced on a row: not on all.
        assert (reference - port).abs().max() > 0.1
    stats = stats_against_reference(history, 1, load_thresholds())
    assert stats.max_abs_diff > 1 and stats.top1_agreement < 0.5

"""Comparing a port's echoed top-K prompt log-probabilities with the reference's."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.ports.topk import (
    TopK,
    align,
    best_offsets,
    kl_bounds,
    max_abs_diff,
    shift_failure,
    token_mismatch,
    top1_agreement,
    topk_from_entries,
    topk_verdict,
)

LIMITS = dict(max_abs_diff_limit=0.5, top1_limit=0.9, kl_limit=0.1, tail_slack=1.0)


def truncate(logprobs: torch.Tensor, k: int) -> TopK:
    """What a server echoes: the K most likely tokens of each row."""
    values, ids = logprobs.topk(k, dim=-1)
    return TopK(ids, values.double())


def exact_kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    return (p_log.exp() * (p_log - q_log)).sum(-1)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), vocab=st.integers(4, 300), k=st.integers(1, 20),
       noise=st.floats(0.0, 2.0), spread=st.floats(0.1, 6.0))
def test_kl_bounds_hold_on_truncated_full_distributions(seed, vocab, k, noise, spread):
    """Port logits = reference + noise in [-a, a]: every log q - log p lies within 2a, which is
    the assumption the upper bound makes with tail_slack = 2a."""
    k = min(k, vocab)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, vocab, generator=g, dtype=torch.float64) * spread
    port_logits = logits + (torch.rand(8, vocab, generator=g, dtype=torch.float64) * 2 - 1) * noise
    p_log, q_log = logits.log_softmax(-1), port_logits.log_softmax(-1)
    lower, upper = kl_bounds(p_log, truncate(q_log, k), tail_slack=2 * noise)
    exact = exact_kl(p_log, q_log)
    assert (lower <= exact + 1e-9).all()
    assert (exact <= upper + 1e-9).all()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), vocab=st.integers(4, 300), k=st.integers(1, 20))
def test_lower_bound_holds_for_any_port(seed, vocab, k):
    """The lower bound assumes nothing: an unrelated port distribution cannot break it."""
    k = min(k, vocab)
    g = torch.Generator().manual_seed(seed)
    p_log = (torch.randn(8, vocab, generator=g, dtype=torch.float64) * 3).log_softmax(-1)
    q_log = (torch.randn(8, vocab, generator=g, dtype=torch.float64) * 5).log_softmax(-1)
    lower, _ = kl_bounds(p_log, truncate(q_log, k), tail_slack=0.0)
    assert (lower <= exact_kl(p_log, q_log) + 1e-9).all()


def test_bounds_are_exact_when_the_top_k_is_everything():
    g = torch.Generator().manual_seed(0)
    p_log = torch.randn(5, 10, generator=g, dtype=torch.float64).log_softmax(-1)
    q_log = torch.randn(5, 10, generator=g, dtype=torch.float64).log_softmax(-1)
    lower, upper = kl_bounds(p_log, truncate(q_log, 10), tail_slack=3.0)
    torch.testing.assert_close(lower, exact_kl(p_log, q_log))
    torch.testing.assert_close(upper, exact_kl(p_log, q_log))


def test_max_abs_diff_and_top1_over_the_listed_tokens():
    reference = torch.tensor([[-0.1, -2.5, -4.0], [-1.0, -0.5, -3.0]], dtype=torch.float64)
    port = TopK(torch.tensor([[0, 2], [0, 1]]),
                torch.tensor([[-0.3, -3.9], [-0.4, -1.2]], dtype=torch.float64))
    torch.testing.assert_close(max_abs_diff(reference, port),
                               torch.tensor([0.2, 0.7], dtype=torch.float64))
    assert top1_agreement(reference, port).tolist() == [True, False]


def test_missing_and_nonfinite_entries():
    reference = torch.tensor([[-0.1, -2.5], [-0.1, -2.5], [-0.1, -2.5]], dtype=torch.float64)
    port = TopK(torch.tensor([[0, -1], [0, 1], [-1, -1]]),
                torch.tensor([[-0.1, math.nan], [math.nan, -2.5], [math.nan, math.nan]],
                             dtype=torch.float64))
    diffs = max_abs_diff(reference, port)
    assert diffs[0] == 0 and diffs[1:].isnan().all()  # a listed NaN, then nothing listed
    lower, upper = kl_bounds(reference, port, tail_slack=1.0)
    assert lower[1:].isnan().all() and upper[1:].isnan().all()
    result = topk_verdict(reference, port, **LIMITS)
    assert not result.passed and "max |d logprob| nan" in result.message()


def prompt_distributions(n=12, vocab=40, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, vocab, generator=g, dtype=torch.float64) * 3).log_softmax(-1)


@pytest.mark.parametrize("shift", [1, -1])
def test_a_shifted_echo_fails_naming_the_shift(shift):
    reference = prompt_distributions()
    port = truncate(reference.roll(-shift, dims=0), 5)  # entry i holds the one at i + shift
    assert (best_offsets(reference, port) == shift).all()
    message = shift_failure(reference, port)
    where = "one position later" if shift > 0 else "one position earlier"
    assert message.startswith(f"the port's prompt log-probabilities match the reference's "
                              f"{where} (offset {shift:+d}) at 100% of positions")
    result = topk_verdict(reference, port, **LIMITS)
    assert not result.passed and result.failures[0] == message


def test_an_aligned_noisy_port_passes():
    reference = prompt_distributions()
    g = torch.Generator().manual_seed(9)
    noise = (torch.rand(reference.shape, generator=g, dtype=torch.float64) * 2 - 1) * 0.01
    port = truncate((reference + noise).log_softmax(-1), 5)
    assert shift_failure(reference, port) is None
    result = topk_verdict(reference, port, **{**LIMITS, "tail_slack": 0.02})
    assert result.passed, result.message()
    assert result.metrics["top1_agreement"] == 1.0
    assert result.metrics["kl_lower"] <= result.metrics["kl_upper"]
    assert len(result.metrics["per_position_abs_logprob_diff"]) == len(reference)


def test_align_pairs_entry_i_with_the_distribution_after_token_i_minus_1():
    logits = torch.randn(4, 6, dtype=torch.float64)
    entries = TopK(torch.arange(4)[:, None], torch.zeros(4, 1, dtype=torch.float64))
    reference, port = align(logits, entries)
    torch.testing.assert_close(reference, logits[:3].log_softmax(-1))
    assert port.ids[:, 0].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="the port echoed 4 prompt positions, the reference "
                                         "computed 3"):
        align(logits[:3], entries)


def test_topk_from_entries_maps_pieces_and_leaves_unknown_ones_out():
    pieces = {" of": 5, " city": 9, "The": 1}
    port = topk_from_entries([{"The": -1.0}, {" of": -0.5, "\ufffd": -2.0, " city": -3.0}],
                             pieces)
    assert port.ids.tolist() == [[1, -1, -1], [5, -1, 9]]
    assert port.logprobs[1, 1].isnan() and port.logprobs[1, 2] == -3.0


def test_token_mismatch_names_the_first_difference():
    assert token_mismatch(["The", " capital"], ["The", " capital"]) is None
    assert token_mismatch(["The", " cap", "ital"], ["The", " capital"]) == (
        "tokenizer mismatch at prompt token 1: the server echoed ' cap' where the reference "
        "tokenizer has ' capital'")
    assert token_mismatch(["<s>", "The"], ["The"]).startswith(
        "tokenizer mismatch at prompt token 0: the server echoed '<s>' where")
    assert token_mismatch(["The", " capital", "!"], ["The", " capital"]) == (
        "tokenizer mismatch at prompt token 2: the server echoed '!' more (the server echoed "
        "3 tokens, the reference has 2)")


@pytest.mark.parametrize("n", [1, 2])
def test_prompts_too_short_for_shift_detection_are_still_compared(n):
    reference = prompt_distributions(n=n)
    port = truncate(reference, 3)
    assert best_offsets(reference, port).numel() == 0 and shift_failure(reference, port) is None
    assert topk_verdict(reference, port, **{**LIMITS, "tail_slack": 0.0}).passed


def test_nothing_to_compare_fails():
    empty = TopK(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, dtype=torch.float64))
    result = topk_verdict(torch.zeros(0, 10, dtype=torch.float64), empty, **LIMITS)
    assert not result.passed and result.metrics["positions"] == 0


def test_a_tail_far_below_the_slack_says_there_is_no_upper_bound():
    """A port that puts nearly all its mass on its top-5: its tail is far more than the tail
    slack below the reference's, so the upper bound's assumption fails (it would read below
    the lower bound)."""
    reference = prompt_distributions()
    values, ids = reference.topk(5, dim=-1)
    port = TopK(ids, (values.log_softmax(-1).exp() * (1 - 1e-9)).log())
    result = topk_verdict(reference, port, **LIMITS)
    assert result.metrics["tail_slack_violated"] == 12
    assert math.isnan(result.metrics["kl_upper"])
    assert any(f.endswith(f"(no upper bound: at 12 positions the port's tail is more than the "
                          f"tail slack of {LIMITS['tail_slack']:g} nats below the reference's)")
               for f in result.failures)

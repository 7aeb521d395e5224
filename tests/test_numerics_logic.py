"""The numerics harness with dummy runners (no model needed)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cases import Case
from harness.numerics.logits import LogitStats, summarize
from harness.numerics.teacher_forced import (
    fp32_verdict,
    load_thresholds,
    make_prompt,
    nonfinite_failures,
    quantized_verdict,
    reduced_verdict,
    stats_against_reference,
    teacher_forced,
)
from harness.testing import DummyRunner
from harness.verdicts import at_least, at_most, nan_max


def test_teacher_forcing_feeds_everyone_the_reference_choice():
    reference, other = DummyRunner(), DummyRunner(noise=0.01)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    history, tokens = teacher_forced(reference, [other], ids, None, steps=4)
    assert len(history) == 5 and len(tokens) == 4
    for fed_ref, fed_other in zip(reference.fed, other.fed):
        assert torch.equal(fed_ref, fed_other)
    stats = stats_against_reference(history, 1, load_thresholds())
    assert stats.positions == 10 and stats.top1_agreement == 1.0
    assert stats.max_abs_diff == pytest.approx(0.01, abs=1e-6)


def test_forced_tokens_override_the_reference():
    reference = DummyRunner()
    forced = [torch.tensor([9]), torch.tensor([8])]
    _, tokens = teacher_forced(reference, [], torch.tensor([[1]]), None, 2, forced)
    assert tokens == forced and reference.fed[1:] == forced


def stats(max_abs=0.0, top1=1.0, max_kl=0.0, share=0.0, cosine=1.0):
    return LogitStats(10, max_abs, cosine, top1, max_kl, share)


BAD = st.sampled_from([float("nan"), float("inf"), float("-inf")])
GOOD = st.floats(0, 1e-5)


@settings(max_examples=200, deadline=None)
@given(bad=BAD, field=st.sampled_from(["max_abs", "top1", "max_kl", "share"]), good=GOOD,
       pretrained=st.booleans())
def test_a_non_finite_aggregate_fails_every_verdict(bad, field, good, pretrained):
    t = load_thresholds()
    values = {"max_abs": good, "top1": 1.0, "max_kl": good, "share": 0.0, field: bad}
    ported, fine = stats(**values), stats(good, max_kl=good)
    if field in ("max_abs", "top1"):
        assert not fp32_verdict(ported, t, pretrained).passed
    if field != "top1":  # the reduced rule reads |dlogit| and KL, not top-1
        assert not reduced_verdict(ported, fine, t, pretrained).passed
    # transformers non-finite in that dtype: the port must meet the KL rule by itself
    assert reduced_verdict(fine, stats(bad), t, pretrained).passed
    assert not reduced_verdict(stats(good, max_kl=bad), stats(bad), t, pretrained).passed


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(BAD, st.floats(allow_nan=False, allow_infinity=False)),
       limit=st.floats(-1e6, 1e6))
def test_comparisons_pass_only_finite_values_on_the_right_side(value, limit):
    assert at_most(value, limit) == (math.isfinite(value) and value <= limit)
    assert at_least(value, limit) == (math.isfinite(value) and value >= limit)


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 4), batch=st.integers(1, 3), bad=BAD, data=st.data())
def test_non_finite_ported_logits_make_every_aggregate_nan(steps, batch, bad, data):
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(batch, 11, generator=g), torch.randn(batch, 11, generator=g))
             for _ in range(steps)]
    step, row, col = (data.draw(st.integers(0, steps - 1)), data.draw(st.integers(0, batch - 1)),
                      data.draw(st.integers(0, 10)))
    pairs[step][1][row, col] = bad
    result = summarize(pairs)
    assert result.nonfinite_positions == 1
    for value in (result.max_abs_diff, result.min_cosine, result.top1_agreement, result.max_kl,
                  result.kl_share):
        assert math.isnan(value)
    history = [[reference, ported] for reference, ported in pairs]
    assert nonfinite_failures(history, 1) == [f"step {step} row {row}: 1 non-finite logits"]


def test_non_finite_failures_are_listed_briefly():
    nan = torch.full((2, 5), float("nan"))
    history = [[torch.zeros(2, 5), nan] for _ in range(3)] + [[nan, nan]]
    lines = nonfinite_failures(history, 1)
    assert lines[:3] == ["step 0 row 0: 5 non-finite logits", "step 0 row 1: 5 non-finite logits",
                         "step 1 row 0: 5 non-finite logits"]
    assert lines[3] == "... and 5 more"
    assert nonfinite_failures(history[3:], 1)[0].endswith("(the reference's too)")


def test_nan_max_does_not_skip_a_nan():
    assert math.isnan(nan_max([0.0, float("nan"), 1.0]))
    assert math.isnan(max(0.0, float("nan"))) is False  # why nan_max exists
    assert nan_max([1.0, 3.0]) == 3.0


def test_fp32_verdict():
    t = load_thresholds()
    assert fp32_verdict(stats(5e-5), t, pretrained=False).passed
    assert not fp32_verdict(stats(2e-4), t, pretrained=False).passed
    assert fp32_verdict(stats(5e-4), t, pretrained=True).passed
    failed = fp32_verdict(stats(0, top1=0.9), t, pretrained=False)
    assert not failed.passed and "top-1 agreement 0.9000" in failed.failures[0]


def test_reduced_verdict_is_relative_to_the_reference_in_that_dtype():
    t = load_thresholds()
    hf = stats(0.2, max_kl=5e-3, share=1.0)  # transformers misses the KL rule itself
    assert reduced_verdict(stats(0.29, max_kl=9e-3, share=1.0), hf, t, False).passed
    assert not reduced_verdict(stats(0.31), hf, t, False).passed
    good_hf = stats(0.2, max_kl=1e-4, share=0.0)  # transformers meets the KL rule ...
    failed = reduced_verdict(stats(0.25, max_kl=2e-3), good_hf, t, False)
    assert not failed.passed and "KL rule" in failed.failures[0]  # ... so the port must too


def test_int8_top1_floor_gives_way_only_to_the_scheme_itself():
    # smollm2-135m w8a8 at batch 1: transformers running the scheme in floating point agrees
    # on 3 of 9 positions, below the 0.5 floor; a port that does as well passes, one that
    # does worse fails, naming whose rate it missed.
    t = load_thresholds()
    fake = stats(top1=1 / 3)
    assert quantized_verdict("w8a8", stats(top1=1 / 3), fake, t).passed
    failed = quantized_verdict("w8a8", stats(top1=2 / 9), fake, t)
    assert failed.failures == ["top-1 agreement 0.2222 < 0.3333 (fake-quant transformers')"]
    failed = quantized_verdict("w8a8", stats(top1=0.4), stats(top1=1.0), t)
    assert failed.failures == ["top-1 agreement 0.4000 < 0.5"]


def test_prompts_are_deterministic_and_left_padded():
    case = Case("qwen-tiny", "cpu", "fp32", 4, 32)
    ids, mask = make_prompt(case, 1000)
    again, _ = make_prompt(case, 1000)
    assert torch.equal(ids, again)
    assert mask[0].all() and (mask.sum(1) < 32)[1:].all()
    assert all(torch.equal(m, torch.sort(m).values) for m in mask)  # zeros then ones


def test_case_ids():
    assert Case("qwen-tiny", "cpu", "fp32", 2, 32).id == "qwen-tiny-cpu-fp32-bs2-in32"
    assert Case("qwen-7b", "npu", "fp16", 8, 256, 64).id == "qwen-7b-npu-fp16-bs8-in256-out64"


def test_thresholds_file_errors_name_the_field(tmp_path):
    bad = tmp_path / "t.toml"
    bad.write_text("version = 1\n[fp32]\ntop1_agreement = 1.0\n")
    with pytest.raises(ValueError, match=r"t.toml: missing number \[fp32\] max_abs_diff_tiny"):
        load_thresholds(bad)
    bad.write_text("version = [")
    with pytest.raises(ValueError, match="cannot read thresholds"):
        load_thresholds(bad)

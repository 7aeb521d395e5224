"""The numerics harness with dummy runners (no model needed)."""

import pytest
import torch

from harness.cases import Case
from harness.compare import LogitStats
from harness.numerics import (
    fp32_verdict,
    load_thresholds,
    make_prompt,
    reduced_verdict,
    stats_against_reference,
    teacher_forced,
)


class DummyRunner:
    """Logits are a fixed function of the last token and the step (plus optional noise)."""

    def __init__(self, vocab=11, noise=0.0):
        self.vocab, self.noise, self.fed = vocab, noise, []

    def _logits(self, last):
        base = torch.nn.functional.one_hot((last * 3 + len(self.fed)) % self.vocab, self.vocab)
        return base.float() * 5 + self.noise

    def prefill(self, input_ids, attention_mask=None, all_logits=False):
        self.fed = [input_ids[:, -1]]
        return self._logits(input_ids[:, -1])

    def decode(self, next_ids):
        self.fed.append(next_ids)
        return self._logits(next_ids)

    def reset(self):
        self.fed = []


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


def stats(max_abs=0.0, top1=1.0, max_kl=0.0, share=0.0):
    return LogitStats(10, max_abs, 1.0, top1, max_kl, share)


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

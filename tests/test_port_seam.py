"""Gates a plug-in port cannot slip past: what it returns is checked at the seam, greedy
generation drives its prefill/decode (and its own `generate`, named), and teacher forcing
feeds it tokens it would not choose. The ports are tests/team_ports.py."""

import json

import numpy
import pytest
import torch

from harness.seam import CheckedRunner, check_factory_result
from harness.testing import DummyRunner

pytest_plugins = ["pytester"]

MODEL = "alpaca2-tiny"
NUMERICS = ("copied_suites/numerics", "--model", MODEL, "--seqlen", "16", "--dtype", "fp32")


def run(suites, run_id: str, ports: list[str], *args) -> dict[str, dict]:
    """The numerics suite on each of `ports` (factories of tests/team_ports.py): its records
    by (port, test)."""
    options = [f"--port={MODEL}=tests.team_ports:{port}" for port in ports]
    suites.runpytest(*NUMERICS, *options, "--run-id", run_id, *args)
    path = suites.path / "reports" / run_id / "records-main.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {(r["port"].rpartition(":")[2], r["test"]): r for r in rows}


def test_a_port_that_ignores_its_decode_input_fails_teacher_forcing(suites):
    rows = run(suites, "ignores", ["ignores_input", "honest"], "--batch", "2", "-k", "teacher")
    ignores = rows["ignores_input", "test_teacher_forced"]
    assert ignores["outcome"] == "failed"
    assert ignores["reason"].startswith("max |dlogit| ") and ignores["max_abs_diff"] > 1e-2
    honest = rows["honest", "test_teacher_forced"]
    assert honest["outcome"] == "passed" and honest["max_abs_diff"] <= 1e-5


def test_a_failing_case_names_the_first_step_and_row_beyond_the_limit(suites):
    rows = run(suites, "where", ["stale_position", "ignores_mask", "honest"], "--batch", "2",
               "-k", "teacher")
    stale = rows["stale_position", "test_teacher_forced"]  # decodes at the wrong position
    assert stale["outcome"] == "failed"
    assert (stale["first_divergence_step"], stale["first_divergence_row"]) == (1, 0)
    assert stale["prefill_within_limits"] is True
    assert stale["first_divergence_position"] == 16  # row 0: 16 prompt tokens, then one fed
    assert "decode step 1, row 0, token position 16" in stale["reason"]
    assert "the prefill was within the limits" in stale["reason"]
    mask = rows["ignores_mask", "test_teacher_forced"]  # attends to row 1's padding
    assert (mask["first_divergence_step"], mask["first_divergence_row"]) == (0, 1)
    assert mask["prefill_within_limits"] is False
    assert "the prefill, row 1" in mask["reason"]
    # re-run with hooks, each names the block it first shows in: position and padding both
    # enter through the attention
    assert stale["first_divergence_block"] == mask["first_divergence_block"] == "layer 0 attn"
    assert "first block beyond its tolerance (step 1, row 0): layer 0 attn, rel err" \
        in stale["failures"]  # the whole message (`reason` is cut at 300 characters)
    assert "first block beyond its tolerance (step 0, row 1): layer 0 attn" in mask["failures"]
    assert stale["localize_seconds"] > 0
    honest = rows["honest", "test_teacher_forced"]
    assert honest["outcome"] == "passed" and "first_divergence_step" not in honest
    assert "layer_localization" not in honest  # passing cases are re-run only with --localize
    assert len(honest["step_max_abs_diff"]) == len(honest["step_max_kl"]) == 9  # + 8 steps
    assert max(stale["step_max_abs_diff"][1:]) > 1e-3 >= stale["step_max_abs_diff"][0]
    # the report draws each failing case's curve, and only theirs
    page = (suites.path / "reports" / "where" / "index.html").read_text()
    assert page.count(": where it diverges") == page.count(": where in the model") == 2


def test_greedy_generation_drives_the_ports_prefill_and_decode(suites):
    """Each port inherits transformers' `generate`, which alone would pass."""
    rows = run(suites, "greedy", ["zero_logits", "nan_logits", "wide_logits", "honest"],
               "-k", "greedy")
    reasons = {port: rows[port, "test_greedy_generation"]["reason"]
               for port in ("zero_logits", "nan_logits", "wide_logits")}
    assert reasons["zero_logits"].startswith("row 0: first differing new token at 0")
    assert reasons["nan_logits"].startswith("step 0 row 0: non-finite logits")
    assert reasons["wide_logits"] == "port returned logits (2, 49216); expected (2, 49152)"
    zero = rows["zero_logits", "test_greedy_generation"]
    assert zero["greedy_path"] == "prefill/decode" and zero["outcome"] == "failed"
    # Its own generate (transformers') is compared too, and agrees.
    assert zero["generate_tokens_equal"] == zero["tokens_compared"] == 64
    honest = rows["honest", "test_greedy_generation"]
    assert honest["outcome"] == "passed"
    assert honest["tokens_equal"] == honest["generate_tokens_equal"] == 64


def test_a_port_ignoring_the_attention_mask_fails_greedy_generation_at_batch_1(suites):
    rows = run(suites, "mask", ["ignores_mask"], "--batch", "1")
    assert rows["ignores_mask", "test_teacher_forced"]["outcome"] == "passed"  # no padding
    greedy = rows["ignores_mask", "test_greedy_generation"]
    assert greedy["outcome"] == "failed"
    assert greedy["reason"].startswith("row 1: first differing new token at ")


def test_a_port_writing_into_its_inputs_fails_and_harms_no_later_port(suites):
    """The harness keeps the reference's tokens and masks for every later case: a port gets
    copies. Here the clobbering port runs first (ports run in name order)."""
    rows = run(suites, "clobbers", ["clobbers_inputs", "honest"], "--batch", "2", "-k",
               "teacher or padding")
    assert rows["clobbers_inputs", "test_padding_invariance"]["outcome"] == "failed"
    assert rows["clobbers_inputs", "test_padding_invariance"]["reason"].startswith(
        "row 1: batch vs alone max |dlogit| ")
    for test in ("test_teacher_forced", "test_padding_invariance"):
        assert rows["honest", test]["outcome"] == "passed"
        assert rows["honest", test]["max_abs_diff"] <= 1e-4


def test_a_ports_own_generate_is_gated_and_named(suites):
    rows = run(suites, "own", ["zero_generate"], "-k", "greedy")
    row = rows["zero_generate", "test_greedy_generation"]
    assert row["outcome"] == "failed"
    assert row["reason"].startswith("generate(): row 0: first differing new token at 0")
    assert row["tokens_equal"] == row["tokens_compared"] == 64  # its prefill/decode agree
    assert row["generate_tokens_equal"] < 64


def test_a_port_that_stops_without_a_finish_reason_is_told_so(suites):
    rows = run(suites, "stops", ["stops_early"], "-k", "greedy")
    reason = rows["stops_early", "test_greedy_generation"]["reason"]
    assert reason == ("generate(): row 0: first differing new token at 5 (the port stopped "
                      "after 5 tokens and gave no finish reason); generate(): row 1: first "
                      "differing new token at 5 (the port stopped after 5 tokens and gave no "
                      "finish reason)")


def test_what_a_port_returns_is_checked_at_the_seam(suites):
    rows = run(suites, "seam", ["wide_logits", "flat_logits", "numpy_logits", "returns_none"],
               "--batch", "2", "-k", "teacher")
    reasons = {port: (row["outcome"], row["reason"]) for (port, _), row in rows.items()}
    assert reasons == {
        "wide_logits": ("failed", "port returned logits (2, 49216); expected (2, 49152)"),
        "flat_logits": ("failed", "port returned logits (49152,); expected (2, 49152)"),
        "numpy_logits": ("failed", "port returned logits of type numpy.ndarray; expected a "
                                   "torch.Tensor (2, 49152)"),
        "returns_none": ("failed", "factory tests.team_ports:returns_none returned NoneType, "
                                   "not a Runner"),
    }


# --- the seam itself, on dummy runners

def test_the_seam_checks_every_logits_return_against_the_models_vocabulary():
    checked = CheckedRunner(DummyRunner(vocab=11), vocab_size=11)
    assert checked.prefill(torch.tensor([[1, 2]])).shape == (1, 11)
    assert checked.decode(torch.tensor([3])).shape == (1, 11)
    assert checked.prefill_shared(torch.tensor([1]), [torch.tensor([2]), torch.tensor([3, 4])],
                                  all_logits=True).shape == (2, 2, 11)
    narrow = CheckedRunner(DummyRunner(vocab=11), vocab_size=12)
    with pytest.raises(pytest.fail.Exception, match=r"^port returned logits \(1, 11\); "
                                                    r"expected \(1, 12\)$"):
        narrow.prefill(torch.tensor([[1, 2]]))
    with pytest.raises(pytest.fail.Exception, match=r"expected \(2, 2, 12\)$"):
        narrow.prefill_shared(torch.tensor([1]), [torch.tensor([2]), torch.tensor([3, 4])],
                              all_logits=True)


class IntegerLogits(DummyRunner):
    def decode(self, next_ids):
        return super().decode(next_ids).long()


def test_integer_logits_are_refused_and_everything_else_is_the_ports_own():
    runner = IntegerLogits(vocab=11)
    checked = CheckedRunner(runner, vocab_size=11)
    checked.prefill(torch.tensor([[1, 2]]))
    with pytest.raises(pytest.fail.Exception,
                       match="^port returned logits of dtype torch.int64; expected a floating"):
        checked.decode(torch.tensor([3]))
    assert checked.config is runner.config and checked.fed is runner.fed
    assert not hasattr(checked, "close") and not getattr(checked, "served", False)


@pytest.mark.parametrize("built, expected", [
    (None, "factory m:make returned NoneType, not a Runner"),
    (numpy.zeros(3), "factory m:make returned ndarray, not a Runner"),
    (type("Half", (), {"prefill": lambda s: 0, "decode": lambda s: 0})(),
     "factory m:make returned Half, not a Runner (no reset, reserve, release, prefill_shared, "
     "generate, weight_bytes, streamed_weight_bytes)"),
])
def test_a_factory_that_does_not_return_a_runner_is_named(built, expected):
    with pytest.raises(pytest.fail.Exception) as failed:
        check_factory_result(built, "factory m:make")
    assert str(failed.value) == expected


def test_a_runner_without_a_vocabulary_is_refused():
    runner = DummyRunner()
    runner.config = object()
    with pytest.raises(pytest.fail.Exception, match="^factory m:make returned DummyRunner, "
                                                    "whose config has no integer vocab_size"):
        check_factory_result(runner, "factory m:make")
    assert check_factory_result(DummyRunner(), "factory m:make") is not None


# --- which greedy paths run

class CountsGenerate(DummyRunner):
    generated = 0

    def generate(self, input_ids, attention_mask, new_tokens):
        self.generated += 1
        return super().generate(input_ids, attention_mask, new_tokens)


class EngineLike(CountsGenerate):
    generates_by_decode = True  # its generate is the harness's loop: not run twice


def test_a_separate_generate_is_compared_and_one_that_is_the_decode_loop_is_not():
    from transformers import AutoTokenizer

    from harness.cases import Case
    from harness.numerics.greedy import greedy_case
    from harness.numerics.teacher_forced import load_thresholds
    from tests.conftest import tiny_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint(MODEL))
    case = Case(MODEL, "cpu", "fp32", 2, 16, 6)
    vocab = len(tokenizer)
    for port, compared in ((CountsGenerate(vocab), True), (EngineLike(vocab), False)):
        result, _ = greedy_case(case, port, DummyRunner(vocab), tokenizer, load_thresholds())
        assert result.passed and result.metrics["greedy_path"] == "prefill/decode"
        assert port.generated == int(compared)
        assert ("generate_tokens_equal" in result.metrics) == compared
        assert ("prefill", (2, 16)) in port.calls  # the left-padded batch went to prefill

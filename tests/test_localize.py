"""Where in the model: a case re-run with hooks names the first block beyond its tolerance,
the planted bug's own place (tests/planted_ports.py), and nothing in an honest port."""

import json

import pytest
import torch

from harness.layer_hooks import hook_points
from harness.numerics.layers import localize_layers
from harness.numerics.teacher_forced import load_thresholds, teacher_forced
from harness.ports.engine import PortedRunner
from harness.ports.hf import HFRunner
from harness.reference_runner import ReferenceRunner
from harness.tp import TensorParallelRunner
from models.config import get_config
from models.precision import Precision
from tests.conftest import tiny_checkpoint
from tests.planted_ports import (
    SCALED_MLP,
    SKIPS_ALL_REDUCE,
    WRONG_ROTARY_BASE,
    norm_eps,
    remote_code_port,
)

LIMITS = load_thresholds()["layers"]
FAMILIES = ("falcon-tiny", "bloom-tiny", "alpaca2-tiny", "qwen-tiny", "starcoder-tiny")


def forced_run(reference, batch: int = 2, seqlen: int = 16, steps: int = 3) -> dict:
    """A left-padded prompt (row 1 padded by 4) and the reference's runner-up tokens."""
    ids = torch.randint(3, 1000, (batch, seqlen), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1:, :4] = 0
    _, tokens = teacher_forced(reference, [], ids, mask, steps)
    return {"ids": ids, "mask": mask, "tokens": torch.stack(tokens)}


def localize(port, reference, step=2, row=1, dtype_reference=None):
    return localize_layers(port, reference, dtype_reference, forced_run(reference), step, row,
                           LIMITS)


@pytest.mark.parametrize("model", FAMILIES)
def test_an_honest_engine_names_no_block_in_any_family(model):
    """Every hook point is matched (BLOOM's residual taken off its sub-blocks' outputs,
    Falcon's MLP output kept before its in-place add) and within the fp32 tolerance."""
    path = tiny_checkpoint(model)
    port, reference = PortedRunner(path), ReferenceRunner(path)
    words, fields = localize(port, reference)
    layers = get_config(model).num_layers
    assert len(fields["block_labels"]) == 1 + 5 * layers  # embed + 5 per layer
    assert fields["block_labels"][:3] == ["embed", "layer 0 attn norm", "layer 0 attn"]
    assert words.startswith("every block within its tolerance at step 2, row 1"), words
    assert max(fields["block_rel_err"]) < 1e-5
    assert "first_divergence_block" not in fields


@pytest.mark.parametrize("dtype", ["bf16", "w8a8"])
@pytest.mark.parametrize("model", ["falcon-tiny", "qwen-tiny"])
def test_an_honest_reduced_precision_engine_names_no_block(model, dtype):
    """Another dtype is allowed a multiple of transformers' own error in it at each block."""
    path, precision = tiny_checkpoint(model), Precision.of(dtype)
    words, fields = localize(PortedRunner(path, precision), ReferenceRunner(path),
                             dtype_reference=lambda: ReferenceRunner(path, precision))
    assert words.startswith("every block within"), words
    assert max(fields["block_rel_err"]) > 1e-4  # it is not fp32: the rule is relative


def test_an_engine_with_one_norm_epsilon_changed_names_that_norm():
    path = tiny_checkpoint("alpaca2-tiny")
    port = norm_eps(path, model="alpaca2-tiny", precision=None, hardware="cpu")
    words, fields = localize(port, ReferenceRunner(path), step=0, row=0)
    assert fields["first_divergence_block"] == "layer 1 attn norm"
    assert fields["first_divergence_block_previous_max"] < 1e-5
    assert words.startswith("first block beyond its tolerance (step 0, row 0): layer 1 attn "
                            "norm, rel err ")


@pytest.mark.parametrize("code, block", [(SCALED_MLP, "layer 1 mlp"),
                                         (WRONG_ROTARY_BASE, "layer 1 attn")])
def test_a_remote_code_port_names_its_planted_block(tmp_path, code, block):
    path = tiny_checkpoint("alpaca2-tiny")
    port = HFRunner(remote_code_port(path, tmp_path / "planted", code), trust_remote_code=True)
    words, fields = localize(port, ReferenceRunner(path))
    assert fields["first_divergence_block"] == block, words
    assert fields["first_divergence_block_previous_max"] < 1e-5
    assert f"{block}, rel err " in words


def test_tensor_parallel_ranks_are_each_compared():
    path = tiny_checkpoint("qwen-tiny")
    runner = TensorParallelRunner(path, 2)
    try:
        words, fields = localize(runner, ReferenceRunner(path))
    finally:
        runner.close()
    assert words.startswith("every block within"), words
    assert len(fields["block_labels"]) == 1 + 5 * get_config("qwen-tiny").num_layers


def test_hook_points_need_decoder_layers_with_an_attention():
    from harness.numerics.layers import NotLocalizable

    with pytest.raises(NotLocalizable, match="Linear has no list of decoder layers"):
        hook_points(torch.nn.Linear(2, 2))


# --- through the numerics suite (pytester) ---

pytest_plugins = ["pytester"]
MODEL = "alpaca2-tiny"


def records(suites, run_id: str) -> dict[str, dict]:
    path = suites.path / "reports" / run_id / "records-main.jsonl"
    return {r["case"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_a_failing_case_names_its_block_and_localize_reruns_passing_ones(suites, tmp_path):
    """The hf port of a remote-code directory with one MLP scaled fails, naming it; with
    --localize the honest engine's passing cases (fp32, and bf16 against transformers' own
    bf16 error) are re-run too and name nothing."""
    planted = remote_code_port(tiny_checkpoint(MODEL), tmp_path / "planted", SCALED_MLP)
    result = suites.runpytest(
        "copied_suites/numerics", "--model", f"{MODEL},falcon-tiny", "--seqlen", "16",
        "--batch", "2", "--dtype", "fp32,bf16", "-k", f"teacher and not ({MODEL} and bf16)",
        "--port", f"{MODEL}=hf",
        "--model-path", f"{MODEL}={planted}", "--trust-remote-code", "--localize",
        "--run-id", "planted")
    result.assert_outcomes(passed=2, failed=1)
    rows = records(suites, "planted")
    row = rows[f"{MODEL}-cpu-fp32-bs2-in16-out8-hf"]
    assert row["outcome"] == "failed"
    assert row["first_divergence_block"] == "layer 1 mlp", row["reason"]
    assert row["first_divergence"].startswith("layer 1 mlp, rel err 1.0e-01 > 1.0e-04")
    assert "first block beyond its tolerance (step 0, row 0): layer 1 mlp" in row["failures"]
    for dtype in ("fp32", "bf16"):
        honest = rows[f"falcon-tiny-cpu-{dtype}-bs2-in16-out8"]
        assert honest["outcome"] == "passed"
        assert honest["layer_localization"].startswith("every block within its tolerance")
        assert len(honest["block_rel_err"]) == len(honest["block_labels"]) == 11
    page = (suites.path / "reports" / "planted" / "index.html").read_text()
    assert page.count(": where in the model") == 3  # every localized case's


def test_a_tensor_parallel_rank_that_skips_an_all_reduce_is_named(suites, tmp_path):
    from tests.test_ports_hf import cut_for_tp

    cut = cut_for_tp(tiny_checkpoint(MODEL), tmp_path / "cut", 2)
    for rank in (0, 1):
        (cut / "part_model" / str(rank) / "modeling_tp_llama.py").write_text(SKIPS_ALL_REDUCE)
    result = suites.runpytest_subprocess(
        "copied_suites/numerics", "--model", MODEL, "--seqlen", "16", "--batch", "2",
        "--dtype", "fp32", "-k", "teacher", "--port", f"{MODEL}=hf", "--model-path",
        f"{MODEL}={cut}", "--tp", "2", "--trust-remote-code", "--run-id", "skips")
    result.assert_outcomes(failed=1)
    (row,) = records(suites, "skips").values()
    assert (row["first_divergence_block"], row["first_divergence_block_rank"]) == \
        ("layer 0 mlp", 1)
    assert "layer 0 mlp on rank 1, rel err" in row["failures"]


class OnePortPool:
    """What `in_the_model` asks of the pool: the port and the fp32 reference."""

    def __init__(self, port, path):
        self.port, self.path = port, path

    def ported(self, case):
        return self.port

    def reference(self, model, dtype="fp32"):
        return ReferenceRunner(self.path)


def test_a_port_that_cannot_be_localized_says_why_and_the_case_keeps_its_figures():
    from harness.cases import Case
    from harness.numerics.localize import in_the_model

    path = tiny_checkpoint(MODEL)
    case = Case(MODEL, "cpu", "fp32", 2, 16, 3)
    run = forced_run(ReferenceRunner(path))
    no_module = PortedRunner(path)
    no_module.model = "not a module"
    words, fields = in_the_model(case, OnePortPool(no_module, path), load_thresholds(), run,
                                 1, 0)
    assert words == ("not localized in the model: the port (PortedRunner) exposes no torch "
                     "module as `model`") and fields == {}
    broken = PortedRunner(path)

    def device_lost(*args, **kwargs):
        raise RuntimeError("device lost")
    broken.prefill = device_lost
    words, fields = in_the_model(case, OnePortPool(broken, path), load_thresholds(), run, 1, 0)
    assert words == ("not localized in the model: the hooked re-run raised RuntimeError: "
                     "device lost") and fields == {}


def test_localize_with_a_stored_reference_is_refused_at_start_up(suites, tmp_path):
    result = suites.runpytest("copied_suites/numerics", "--model", MODEL, "--localize",
                              "--reference-mode", "stored", "--reference-store", str(tmp_path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert any("--localize re-runs cases on the reference model, which --reference-mode stored "
               "never loads; use --reference-mode auto or live" in line
               for line in result.errlines)

"""Tensor parallelism: cut checkpoints per rank, rank directories, world-size errors, two ranks
against one, a dying rank, and numerics at --tp 2."""
# ruff: noqa: F811  (the fixtures imported above are taken as test arguments)

import json
import shutil

import pytest
import torch

from harness.cli import main
from harness.ports.engine import PortedRunner
from harness.tp import RankFailed, TensorParallelRunner
from models.checkpoint import CheckpointError
from models.config import get_config
from models.loading import build_model, load_model
from models.parallel import SplitError, check_world_size
from models.ported import check_parts
from models.precision import Precision
from tests.conftest import tiny_checkpoint
from tests.test_quant_tp import ids, logits, quantized  # noqa: F401  (fixtures)

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def split(quantized, tmp_path_factory):
    """The w8a8 qwen-tiny cut for two ranks: part_model/{0,1}."""
    out = tmp_path_factory.mktemp("split") / "qwen-w8a8-tp2"
    assert main(["weights", "cut", str(quantized), str(out), "--world-size", "2"]) == 0
    return out


def test_cut_writes_one_loadable_directory_per_rank(split):
    parts = sorted(p.name for p in (split / "part_model").iterdir())
    assert parts == ["0", "1"]
    for rank in parts:
        config = json.loads((split / "part_model" / rank / "config.json").read_text())
        assert config["llmgate"]["tensor_parallel"] == {"rank": int(rank), "world_size": 2}
        assert config["quantization_config"]["scheme"] == "w8a8"
    check_parts(split, 2)


def test_a_rank_directory_refuses_to_load_outside_its_group(split):
    with pytest.raises(CheckpointError, match="holds rank 1 of 2; load it as rank 1 of a 2-rank"):
        load_model(split / "part_model" / "1")


def test_part_model_problems_are_named(split, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(split, broken)
    with pytest.raises(ValueError, match="split for 2 ranks; run it with --tp 2, not --tp 4"):
        check_parts(broken, 4)
    config = broken / "part_model" / "1" / "config.json"
    data = json.loads(config.read_text())
    data["llmgate"]["tensor_parallel"]["world_size"] = 4
    config.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="ranks from different world sizes: 0: 2, 1: 4"):
        check_parts(broken, 2)
    shutil.rmtree(broken / "part_model" / "1")
    with pytest.raises(ValueError, match=r"part_model: rank 1 missing \(world size 2\)"):
        check_parts(broken, 2)


def test_world_size_errors_name_what_does_not_divide():
    with pytest.raises(SplitError, match="smollm2-135m: world size 2 does not divide 9 "
                                         "attention heads"):
        check_world_size(get_config("smollm2-135m"), 2)


def test_two_ranks_match_one(ids):
    """gloo, two processes: logits of the split qwen-tiny equal the whole model's."""
    path = tiny_checkpoint("qwen-tiny")
    whole = PortedRunner(path)
    expected = whole.prefill(ids, torch.ones_like(ids))
    runner = TensorParallelRunner(path, 2)
    try:
        got = runner.prefill(ids, torch.ones_like(ids))
        assert (got - expected).abs().max() < 1e-4
        step = runner.decode(got.argmax(-1))
        assert (step - whole.decode(expected.argmax(-1))).abs().max() < 1e-4
    finally:
        runner.close()


def test_a_rank_that_dies_ends_the_run_with_its_name(ids):
    runner = TensorParallelRunner(tiny_checkpoint("falcon-tiny"), 2)
    try:
        runner.ranks[0].kill()
        runner.ranks[0].join(10)
        with pytest.raises(RankFailed, match="rank 1 exited with code -9"):
            runner.prefill(ids, torch.ones_like(ids))
    finally:
        runner.close()


# --- through the suites (pytester) ---

pytest_plugins = ["pytester"]


def rows(pytester, run_id):
    import csv

    return list(csv.DictReader(open(pytester.path / "reports" / run_id / "numerics.csv")))


def test_numerics_at_tp2_for_every_family(suites):
    result = suites.runpytest("copied_suites/numerics", "--tp", "2", "-k", "cpu and fp32",
                              "--batch", "2", "--seqlen", "32", "--decode-steps", "4",
                              "--run-id", "tp2")
    result.assert_outcomes(passed=15, skipped=3)  # smollm2-135m: 9 heads do not split
    records = rows(suites, "tp2")
    assert all(r["case"].endswith("-tp2") for r in records)
    skipped = {r["model"]: r["reason"] for r in records if r["outcome"] == "skipped"}
    assert set(skipped) == {"smollm2-135m"}
    assert "does not divide 9 attention heads" in skipped["smollm2-135m"]


def test_quant_then_cut_passes_the_numerics_suite_at_tp2(suites, split):
    result = suites.runpytest("copied_suites/numerics", "--model-path", f"qwen-tiny={split}",
                              "--tp", "2", "-k", "w8a8", "--batch", "1,2", "--seqlen", "32",
                              "--decode-steps", "4", "--run-id", "q")
    result.assert_outcomes(passed=3)
    cases = {r["case"] for r in rows(suites, "q")}
    assert "qwen-tiny-cpu-w8a8-bs1-in32-out4-tp2" in cases
    assert {r["activation_dtype"] for r in rows(suites, "q")} == {"fp32"}


@pytest.mark.parametrize("args, message", [
    (["--model", "smollm2-135m", "--tp", "2"],
     "--tp 2: smollm2-135m: world size 2 does not divide 9 attention heads"),
    (["--tp", "0"], "--tp '0': expected an integer >= 1"),
    (["--dtype", "w4a16"], "w8a16, w8a8"),
])
def test_tp_and_dtype_usage_errors(suites, args, message):
    result = suites.runpytest("copied_suites/numerics", "--collect-only", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_stored_weights_must_match_the_dtype_and_the_tp(suites, quantized, split):
    wrong_dtype = suites.runpytest("copied_suites/numerics", "--collect-only", "--model-path",
                                   f"qwen-tiny={quantized}", "--dtype", "fp32")
    wrong_dtype.stderr.fnmatch_lines(["*holds w8a8 weights but --dtype asks for fp32; "
                                      "add --dtype w8a8*"])
    wrong_tp = suites.runpytest("copied_suites/numerics", "--collect-only", "--model-path",
                                f"qwen-tiny={split}")
    wrong_tp.stderr.fnmatch_lines(["*part_model is split for 2 ranks; run it with --tp 2, "
                                   "not --tp 1*"])
    assert wrong_dtype.ret == wrong_tp.ret == pytest.ExitCode.USAGE_ERROR


def test_handle_weights_command_lines_run_as_the_bloom_document_writes_them(tmp_path, ids):
    """quant, then cut_quant, and cut_float: the same files as `weights quant|cut`."""
    source = str(tiny_checkpoint("bloom-tiny"))

    def handle(kind, src, out):
        return main(["weights", "--input-path", str(src), "--output-path", str(tmp_path / out),
                     "--handle-type", kind])

    assert handle("quant", source, "bloom_quant") == 0
    config = json.loads((tmp_path / "bloom_quant" / "config.json").read_text())
    assert config["quantization_config"]["scheme"] == "w8a8"  # the document's W8A8
    assert handle("cut_quant", tmp_path / "bloom_quant", "bloom_quant_cut") == 0
    assert handle("cut_float", source, "bloom_cut") == 0
    for out in ("bloom_cut", "bloom_quant_cut"):
        assert sorted(p.name for p in (tmp_path / out / "part_model").iterdir()) == ["0", "1"]
    check_parts(tmp_path / "bloom_quant_cut", 2)
    whole = logits(load_model(tmp_path / "bloom_quant"), ids)
    plain = build_model(source, Precision.of("w8a8"), cpu_dense=False)
    assert torch.equal(logits(plain, ids), whole)


@pytest.mark.parametrize("args, message", [
    (["--handle-type", "cut_quant", "--output-path", "OUT"],
     "missing --input-path"),
    (["--handle-type", "cut_quant", "--input-path", "FLOAT", "--output-path", "OUT"],
     "--handle-type cut_quant: * holds float weights; cut_float splits them, or quantize "
     "first with --handle-type quant"),
    (["--input-path", "FLOAT", "quant", "FLOAT", "OUT", "--scheme", "w8a8"],
     "--input-path is handle_weights.py's form; give `weights quant IN OUT` or that form, "
     "not both"),
])
def test_handle_weights_mistakes_are_one_line_errors(args, message, tmp_path, capsys):
    from fnmatch import fnmatch

    args = [str(tiny_checkpoint("bloom-tiny")) if a == "FLOAT" else
            str(tmp_path / "o") if a == "OUT" else a for a in args]
    assert main(["weights", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and fnmatch(err, f"llmgate weights*{message}*"), err
    assert not (tmp_path / "o").exists()


def test_cut_float_of_quantized_weights_is_refused(quantized, tmp_path, capsys):
    assert main(["weights", "--handle-type", "cut_float", "--input-path", str(quantized),
                 "--output-path", str(tmp_path / "o")]) == 2
    assert "holds w8a8 weights; cut_quant splits quantized ones" in capsys.readouterr().err

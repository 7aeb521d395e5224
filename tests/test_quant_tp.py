"""INT8 (w8a16, w8a8), the weight tools and tensor parallelism, with their bad inputs."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.cli import main
from harness.ports.engine import PortedRunner
from harness.tp import RankFailed, TensorParallelRunner
from models.checkpoint import CheckpointError
from models.config import get_config
from models.loading import build_model, load_model
from models.parallel import SplitError, check_world_size
from models.ported import check_parts
from models.precision import Precision
from models.quant import SCHEMES, quantizable, quantize_
from tests.conftest import tiny_checkpoint


def logits(model, ids):
    from models.engine import Engine

    return Engine(model).prefill(ids, torch.ones_like(ids)).float()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_quantize_swaps_every_linear_but_the_lm_head(scheme, ids):
    model = load_model(tiny_checkpoint("bloom-tiny"))
    expected = logits(model, ids)
    names = quantize_(model, SCHEMES[scheme])
    assert names == quantizable(model) and "lm_head" not in names and names
    layer = model.blocks[0].mlp.down
    assert layer.weight is None and layer.weight_int8.dtype == torch.int8
    got = logits(model, ids)
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1).min()
    assert 0.99 < cosine < 1.0  # quantized: close, and not a no-op


def test_quantize_lm_head_is_an_explicit_choice():
    model = load_model(tiny_checkpoint("qwen-tiny"))  # an untied head (a tied one stays float)
    assert "lm_head" in quantize_(model, SCHEMES["w8a8"], include_lm_head=True)


@pytest.mark.parametrize("name", ["qwen-tiny", "bloom-tiny", "falcon-tiny", "starcoder-tiny",
                                  "alpaca2-tiny"])
@pytest.mark.parametrize("dtype, lm_head", [("w8a16", False), ("w8a8", True)])
def test_quantizing_while_loading_equals_quantizing_the_float_model(name, dtype, lm_head):
    # build_model quantizes each weight as it is read (no float copy of the model is held);
    # the result is the float32 model quantized after loading, tensor for tensor.
    from models.quant import cast_floats_

    precision = Precision.of(dtype, "cpu")
    path = tiny_checkpoint(name)
    got = build_model(path, precision, lm_head=lm_head, cpu_dense=False).state_dict()
    float_model = load_model(path)
    quantize_(float_model, SCHEMES[precision.scheme], include_lm_head=lm_head)
    expected = cast_floats_(float_model, precision.dtype).state_dict()
    assert got.keys() == expected.keys()
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key


@pytest.mark.parametrize("width", [16, 12])  # the int8 weight-pack kernel; dequantize
def test_w8a16_in_bf16_matches_its_float_layer(width):
    # _weight_int8pack_mm reads input features in blocks of 8; other widths are dequantized.
    from models.layers import Linear

    layer = Linear(width, 16, bias=False, split="column")
    torch.nn.init.normal_(layer.weight, generator=torch.Generator().manual_seed(1))
    x = torch.randn(3, width, generator=torch.Generator().manual_seed(2))
    expected = layer(x)
    quantize_(torch.nn.ModuleDict({"l": layer}), SCHEMES["w8a16"])
    got = layer(x.bfloat16()).float()
    assert torch.allclose(got, expected, atol=0.1, rtol=0.05)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """qwen-tiny written by `llmgate weights quant --scheme w8a8`."""
    out = tmp_path_factory.mktemp("w8a8") / "qwen-w8a8"
    assert main(["weights", "quant", str(tiny_checkpoint("qwen-tiny")), str(out),
                 "--scheme", "w8a8"]) == 0
    return out


def test_a_quantized_checkpoint_loads_as_stored(quantized, ids):
    config = json.loads((quantized / "config.json").read_text())
    q = config["quantization_config"]
    assert q["scheme"] == "w8a8" and "lm_head" not in q["modules"] and q["modules"]
    assert (quantized / "tokenizer.json").exists()
    on_the_fly = build_model(tiny_checkpoint("qwen-tiny"), Precision.of("w8a8"), cpu_dense=False)
    stored = load_model(quantized)
    assert torch.equal(logits(stored, ids), logits(on_the_fly, ids))


def test_a_quantized_checkpoint_refuses_another_dtype(quantized):
    with pytest.raises(CheckpointError, match="holds w8a8 weights.*choose --dtype w8a8"):
        PortedRunner(quantized, Precision.of("w8a16"))


def damaged(source, tmp_path, edit_tensors=None, edit_config=None):
    out = tmp_path / "damaged"
    shutil.copytree(source, out)
    if edit_tensors:
        tensors = load_file(out / "model.safetensors")
        edit_tensors(tensors)
        save_file(tensors, out / "model.safetensors")
    if edit_config:
        config = json.loads((out / "config.json").read_text())
        edit_config(config)
        (out / "config.json").write_text(json.dumps(config))
    return out


def test_a_missing_scale_is_named(quantized, tmp_path):
    name = "blocks.0.mlp.down.weight_scale"
    out = damaged(quantized, tmp_path, edit_tensors=lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' is missing"):
        load_model(out)


def test_a_scale_of_the_wrong_shape_names_both_shapes(quantized, tmp_path):
    name = "blocks.0.attn.qkv.weight_scale"

    def cut(tensors):
        tensors[name] = tensors[name][:-1].clone()
    out = damaged(quantized, tmp_path, edit_tensors=cut)
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' has shape \(\d+,\), expected "
                                              r"\(\d+,\)"):
        load_model(out)


def test_an_unknown_scheme_is_refused(quantized, tmp_path):
    out = damaged(quantized, tmp_path,
                  edit_config=lambda c: c["quantization_config"].update(scheme="w4a16"))
    with pytest.raises(CheckpointError, match="'quantization_config.scheme' is 'w4a16', "
                                              "expected one of w8a16, w8a8"):
        load_model(out)


def test_an_unreadable_input_leaves_no_output(tmp_path, capsys):
    code = main(["weights", "quant", str(tmp_path / "missing"), str(tmp_path / "o"),
                 "--scheme", "w8a16"])
    assert code == 2 and "missing/config.json: file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_weight_tools_refuse_a_non_empty_output(quantized, capsys):
    code = main(["weights", "cut", str(tiny_checkpoint("qwen-tiny")), str(quantized),
                 "--world-size", "2"])
    assert code == 2 and "exists and is not empty; choose another OUT or --force" in (
        capsys.readouterr().err)


def test_cut_refuses_a_world_size_the_heads_do_not_allow(tmp_path, capsys):
    code = main(["weights", "cut", str(tiny_checkpoint("smollm2-135m")), str(tmp_path / "o"),
                 "--world-size", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "world size 2 does not divide 9 attention heads" in err
    assert not (tmp_path / "o").exists()  # refused before anything is written


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

"""INT8 (w8a16, w8a8), the weight tools and tensor parallelism, with their bad inputs."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.cli import main
from harness.ports.engine import PortedRunner
from models.checkpoint import CheckpointError
from models.loading import build_model, load_model
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

"""Weights llmgate would misread are refused wherever they are loaded: int8 or int32 tensors,
quantization parameters or configs in a float checkpoint; its own int8 checkpoints still load."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import CheckpointError
from models.config import get_config
from models.loading import load_model
from tests.test_bad_input import one_line


def _edit(path, file, edit):
    state = load_file(path / file) if file.endswith(".safetensors") else torch.load(path / file)
    edit(state)
    if file.endswith(".safetensors"):
        save_file(state, path / file)
    else:
        torch.save(state, path / file)


def _refused_everywhere(name, path, match):
    from harness.checkpoints import verify_checkpoint
    from harness.reference import load_reference

    for load in (load_model, load_reference, lambda p: verify_checkpoint(name, p)):
        with pytest.raises(CheckpointError, match=match) as e:
            load(path)
        one_line(e)


def _int8_valued(state, name):
    state[name] = state[name].mul(127 / state[name].abs().max()).round().to(torch.int8)


def test_int8_weights_in_a_float_checkpoint_are_refused(make_tiny):
    path = make_tiny(get_config("falcon-tiny"))
    name = "transformer.h.0.self_attention.query_key_value.weight"
    _edit(path, "model.safetensors", lambda s: _int8_valued(s, name))
    _refused_everywhere("falcon-tiny", path,
                        rf"model\.safetensors: tensor '{name}' is int8, expected floating "
                        r"point \(quantized weights are read only in llmgate's own int8 "
                        r"layout\)")


def test_int32_weights_in_a_bin_shard_are_refused(make_tiny):
    path = make_tiny(get_config("alpaca2-tiny"), "bin-sharded")
    shard = "pytorch_model-00001-of-00002.bin"
    name = sorted(n for n in torch.load(path / shard) if n.endswith("proj.weight"))[0]
    _edit(path, shard, lambda s: s.update({name: s[name].mul(1000).round().to(torch.int32)}))
    _refused_everywhere("alpaca2-tiny", path, rf"{shard}: tensor '{name}' is int32, expected "
                                              "floating point")


@pytest.mark.parametrize("suffix", ["weight_scale", "weight_offset", "scales", "qzeros"])
def test_quantization_parameters_are_refused(make_tiny, suffix):
    path = make_tiny(get_config("falcon-tiny"))
    name = f"transformer.h.0.mlp.dense_4h_to_h.{suffix}"
    _edit(path, "model.safetensors", lambda s: s.update({name: torch.ones(64)}))
    _refused_everywhere("falcon-tiny", path, rf"model\.safetensors: tensor '{name}' is a "
                                             "quantization parameter")


@pytest.mark.parametrize("method", ["gptq", "awq", "bitsandbytes"])
def test_a_quantization_config_llmgate_does_not_implement_is_refused(make_tiny, method):
    path = make_tiny(get_config("falcon-tiny"))
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4}
    (path / "config.json").write_text(json.dumps(config))
    _refused_everywhere("falcon-tiny", path, rf"config\.json: field "
                                             rf"'quantization_config.quant_method' is "
                                             rf"'{method}', which llmgate does not implement")


def test_llmgates_own_int8_checkpoint_still_loads_and_verifies(tmp_path):
    from harness.checkpoints import verify_checkpoint
    from harness.cli.weights import quant
    from tests.conftest import tiny_checkpoint

    out = tmp_path / "w8a16"
    out.mkdir()
    quant(tiny_checkpoint("falcon-tiny"), out, "w8a16", False, torch.float32)
    verify_checkpoint("falcon-tiny", out)
    assert load_model(out).blocks[0].attn.qkv.weight_int8.dtype == torch.int8
    # and its stored types are checked too: an int8 tensor where a float one belongs
    _edit(out, "model.safetensors", lambda s: _int8_valued(s, "final_norm.weight"))
    with pytest.raises(CheckpointError, match=r"tensor 'final_norm.weight' is int8, expected "
                                              "floating point"):
        load_model(out)


def test_a_model_path_with_int8_weights_is_a_usage_error(make_tiny):
    from harness.settings import model_paths

    path = make_tiny(get_config("falcon-tiny"))
    _edit(path, "model.safetensors", lambda s: _int8_valued(s, "transformer.ln_f.weight"))
    with pytest.raises(pytest.UsageError, match=r"--model-path falcon-tiny: .*model\.safetensors"
                                                r": tensor 'transformer.ln_f.weight' is int8"):
        model_paths([f"falcon-tiny={path}"])


@pytest.mark.parametrize("name, heads", [("qwen-tiny", 8), ("alpaca2-tiny", 8),
                                         ("qwen-tiny", 3), ("alpaca2-tiny", 0)])
def test_a_wrong_head_count_is_named_as_such(make_tiny, name, heads):
    from harness.checkpoints import verify_checkpoint

    path = make_tiny(get_config(name), "safetensors-sharded")  # Qwen v1's own layout
    config = json.loads((path / "config.json").read_text())
    config["num_attention_heads"] = heads
    (path / "config.json").write_text(json.dumps(config))
    width = "kv_channels" if name == "qwen-tiny" else "head_dim"
    for load in (load_model, lambda p: verify_checkpoint(name, p)):
        with pytest.raises(CheckpointError, match=rf"config\.json: field 'num_attention_heads' "
                                                  rf"is {heads}: 'hidden_size' 64 is not "
                                                  rf"num_attention_heads x {width}") as e:
            load(path)
        one_line(e)


def _modelslim(source, out, layout):
    """A directory in msModelSlim's layout, written from a float checkpoint: W8A8 linear
    layers (int8 weight, per-channel scale and offset, static input scale and offset), the
    rest FLOAT, as the Bloom document's `handle_weights.py --handle-type quant` leaves it."""
    import numpy as np

    out.mkdir()
    shutil.copy(source / "config.json", out / "config.json")
    state = load_file(source / "model.safetensors")
    quantized, floats, description = {}, {}, {}
    for name, tensor in state.items():
        if name.endswith(".weight") and tensor.dim() == 2 and ".h." in name:
            layer = name.removesuffix(".weight")
            scale = tensor.abs().amax(1, keepdim=True) / 127
            quantized[name] = (tensor / scale).round().to(torch.int8)
            quantized[f"{layer}.weight_scale"] = scale.squeeze(1)
            quantized[f"{layer}.weight_offset"] = torch.zeros(len(scale))
            quantized[f"{layer}.input_scale"] = torch.ones(1)
            quantized[f"{layer}.input_offset"] = torch.zeros(1)
            for key in (name, f"{layer}.weight_scale", f"{layer}.weight_offset",
                        f"{layer}.input_scale", f"{layer}.input_offset"):
                description[key] = "W8A8"
        else:
            floats[name] = tensor
            description[name] = "FLOAT"
    if layout == "safetensors":
        save_file({**quantized, **floats}, out / "quant_model_weight.safetensors")
        (out / "quant_model_description.json").write_text(json.dumps(description))
    else:  # the older numpy layout
        np.save(out / "quant_weight.npy", {k: v.numpy() for k, v in quantized.items()
                                           if k.endswith(".weight")})
        np.save(out / "weight_scale.npy", {k: v.numpy() for k, v in quantized.items()
                                           if k.endswith("weight_scale")})
        torch.save(floats, out / "float_layers_weights.pt")
    return out


@pytest.mark.parametrize("layout, found", [
    ("safetensors", r"quant_model_description\.json, quant_model_weight\.safetensors "
                    r"\(\d+ FLOAT, \d+ W8A8\)"),
    ("numpy", r"quant_weight\.npy, weight_scale\.npy, float_layers_weights\.pt"),
])
def test_an_msmodelslim_directory_is_refused_saying_what_was_found(make_tiny, tmp_path, capsys,
                                                                   layout, found):
    from harness.settings import model_paths

    path = _modelslim(make_tiny(get_config("bloom-tiny")), tmp_path / "bloom_quant", layout)
    message = rf"an msModelSlim quantized directory \({found}\): its int8 weights"
    _refused_everywhere("bloom-tiny", path, message)
    with pytest.raises(pytest.UsageError, match=r"--model-path bloom-tiny: .*" + message):
        model_paths([f"bloom-tiny={path}"])
    from harness.cli import main

    assert main(["weights", "--handle-type", "cut_quant", "--input-path", str(path),
                 "--output-path", str(tmp_path / "o")]) == 2  # not taken for float weights
    assert "an msModelSlim quantized directory" in capsys.readouterr().err
    # split for two chips (cut_quant): found in its first rank
    cut = tmp_path / "bloom_quant_cut" / "part_model"
    cut.mkdir(parents=True)
    shutil.copytree(path, cut / "0")
    shutil.copytree(path, cut / "1")
    with pytest.raises(pytest.UsageError, match=r"msModelSlim quantized directory \(part_model/0"
                                                r"/"):
        model_paths([f"bloom-tiny={cut.parent}"])

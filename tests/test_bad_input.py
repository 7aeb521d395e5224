"""Every bad input gets a one-line error naming the file/field and what was expected."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.devices import get_backend
from models.checkpoint import CheckpointError
from models.config import get_config
from models.loading import load_model
from models.precision import parse_dtype


@pytest.fixture
def ckpt(make_tiny):
    return make_tiny(get_config("alpaca2-tiny"), "safetensors")


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found") as e:
        load_model(tmp_path / "nope")
    assert str(tmp_path / "nope") in one_line(e)


def test_no_config_json(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: file not found"):
        load_model(ckpt)


def test_config_json_not_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_model(ckpt)


def test_unknown_model_type(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "mamba"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'model_type' is 'mamba', "
                                              r"expected one of .*gpt_bigcode.*llama.*qwen"):
        load_model(ckpt)


def test_config_field_of_wrong_type(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["num_hidden_layers"] = "two"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="field 'num_hidden_layers' is 'two', expected int"):
        load_model(ckpt)


def test_unsupported_config_value(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="rope type 'yarn' is not supported"):
        load_model(ckpt)


def test_missing_tensor(ckpt):
    state = load_file(ckpt / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.1.mlp.up_proj.weight' is "
                                              r"missing \(expected shape \(172, 64\)\)"):
        load_model(ckpt)


def test_tensor_with_wrong_shape(ckpt):
    state = load_file(ckpt / "model.safetensors")
    state["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(64, 32)
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor "
                                              r"'model.layers.0.self_attn.o_proj.weight' has shape "
                                              r"\(64, 32\), expected \(64, 64\)") as e:
        load_model(ckpt)
    one_line(e)


def test_truncated_safetensors(ckpt):
    file = ckpt / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated or corrupt "
                                              r"safetensors file") as e:
        load_model(ckpt)
    one_line(e)


def test_garbage_safetensors(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupt safetensors"):
        load_model(ckpt)


def test_corrupt_bin_shard(make_tiny):
    path = make_tiny(get_config("alpaca2-tiny"), "bin-sharded")
    shard = path / "pytorch_model-00002-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"pytorch_model-00002-of-00002.bin: truncated or "
                                              r"corrupt PyTorch weights file"):
        load_model(path)


def test_index_names_missing_shard(make_tiny):
    path = make_tiny(get_config("qwen-tiny"), "safetensors-sharded")
    (path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: names shard "
                                              r"'model-00002-of-00002.safetensors', which does "
                                              r"not exist"):
        load_model(path)


def test_index_without_weight_map(make_tiny):
    path = make_tiny(get_config("qwen-tiny"), "safetensors-sharded")
    (path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="expected a non-empty 'weight_map' object"):
        load_model(path)


def test_no_weight_files(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights found \(expected one of "
                                              r"model.safetensors, pytorch_model.bin"):
        load_model(ckpt)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'falcon-40b'; valid names: falcon-7b"):
        get_config("falcon-40b")


def test_unknown_hardware():
    with pytest.raises(ValueError, match="unknown hardware 'tpu'; valid: cpu, cuda, npu"):
        get_backend("tpu")


def test_unknown_dtype():
    with pytest.raises(ValueError, match="unknown dtype 'fp8'; valid: fp32, bf16, fp16"):
        parse_dtype("fp8")


def test_copied_checkpoint_still_loads(ckpt, tmp_path):
    # Sanity for the fixtures above: the untouched checkpoint loads.
    shutil.copytree(ckpt, tmp_path / "copy")
    assert load_model(tmp_path / "copy").config.family == "llama"


def test_checkpoint_of_another_model_is_refused(make_tiny):
    from harness.checkpoints import verify_checkpoint

    path = make_tiny(get_config("falcon-tiny"))
    with pytest.raises(CheckpointError, match=r"config.json: not a qwen-7b checkpoint: family "
                                              r"'falcon' \(expected 'qwen'\), vocab_size 49152"):
        verify_checkpoint("qwen-7b", path)
    verify_checkpoint("falcon-tiny", path)  # the right name passes


# Weights llmgate would misread as floats are refused, with the file and the tensor (or the
# method): the port and the transformers reference would agree on the misread numbers.

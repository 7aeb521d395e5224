"""Any HuggingFace causal LM by directory: `--model-path NAME=DIR` with a NAME the registry does
not list registers the model from its config.json. The engine runs the architectures of its
families (a Llama-layout and a Qwen2 directory here, and Mistral's, which is Llama's up to its
window); one it lacks (GPT-2 here) runs as the hf port, and the engine is refused in one line."""

import json
import shutil

import pytest
import torch
import transformers

from harness.checkpoints import TOKENIZER_FILES, write_tiny_checkpoint
from models.config import ModelConfig
from tests.conftest import tiny_checkpoint

pytest_plugins = ["pytester"]

SMALL = dict(vocab_size=49152, hidden_size=64, num_layers=2, max_positions=256, norm_eps=1e-6)


def with_tokenizer(out):
    for name in TOKENIZER_FILES:
        shutil.copy(tiny_checkpoint("alpaca2-tiny") / name, out / name)
    return out


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    root = tmp_path_factory.mktemp("unregistered")
    made = {}
    for name, cfg in {
        "mini-llama": ModelConfig("mini-llama", "llama", num_heads=4, num_kv_heads=2,
                                  intermediate_size=128, tie_embeddings=False,
                                  rope_theta=500000.0, **SMALL),
        "mini-qwen2": ModelConfig("mini-qwen2", "qwen", num_heads=4, num_kv_heads=2,
                                  intermediate_size=128, tie_embeddings=True, qkv_bias=True,
                                  rope_theta=1000000.0, variant="qwen2", **SMALL),
    }.items():
        out = root / name
        out.mkdir()
        write_tiny_checkpoint(cfg, out, "safetensors")
        made[name] = with_tokenizer(out)
    mistral = root / "mini-mistral"
    shutil.copytree(made["mini-llama"], mistral)
    config = json.loads((mistral / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=96)
    (mistral / "config.json").write_text(json.dumps(config))
    made["mini-mistral"] = mistral
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=49152, n_positions=256, n_embd=64, n_layer=2, n_head=4,
        initializer_range=0.3, bos_token_id=1, eos_token_id=2))
    gpt2.save_pretrained(root / "mini-gpt2")
    made["mini-gpt2"] = with_tokenizer(root / "mini-gpt2")
    return made


def rows(pytester, run_id):
    path = pytester.path / "reports" / run_id / "records-main.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name", ["mini-llama", "mini-qwen2"])
def test_an_unregistered_directory_of_an_engine_family_passes_numerics_on_the_engine(
        suites, directories, name):
    result = suites.runpytest("copied_suites/numerics", "--model-path",
                              f"{name}={directories[name]}", "--dtype", "fp32", "--batch", "2",
                              "--seqlen", "16", "--run-id", name)
    result.assert_outcomes(passed=3)
    found = rows(suites, name)
    assert {r["model"] for r in found} == {name}
    assert {r["port_kind"] for r in found} == {"engine"}
    assert {r["config_source"] for r in found} == {str(directories[name] / "config.json")}


def test_a_mistral_directory_runs_on_the_engine_up_to_its_window(suites, directories):
    path = f"mini-mistral={directories['mini-mistral']}"
    too_long = suites.runpytest("copied_suites/numerics", "--model-path", path,
                                "--dtype", "fp32", "--seqlen", "128", "--run-id", "long")
    assert too_long.ret == pytest.ExitCode.USAGE_ERROR
    too_long.stderr.fnmatch_lines(["*mini-mistral has 96 positions*"])
    result = suites.runpytest("copied_suites/numerics", "--model-path", path,
                              "--dtype", "fp32", "--batch", "2", "--seqlen", "16",
                              "-k", "teacher", "--run-id", "mistral")
    result.assert_outcomes(passed=1)


def test_an_architecture_the_engine_lacks_is_refused_on_it_and_runs_as_hf(suites,
                                                                       directories):
    path = f"mini-gpt2={directories['mini-gpt2']}"
    engine = suites.runpytest("copied_suites/numerics", "--model-path", path,
                              "--run-id", "refused")
    assert engine.ret == pytest.ExitCode.USAGE_ERROR
    engine.stderr.fnmatch_lines(["*--model-path mini-gpt2=*: the engine does not run this "
                                 "architecture (*'gpt2'*); run it on transformers with "
                                 "--port mini-gpt2=hf"])
    hf = suites.runpytest("copied_suites/numerics", "--model-path", path, "--port",
                          "mini-gpt2=hf", "--dtype", "fp32", "--batch", "2", "--seqlen", "16",
                          "--run-id", "hf")
    hf.assert_outcomes(passed=3)
    found = rows(suites, "hf")
    assert {r["port_kind"] for r in found} == {"hf"}
    assert all(r["case"].startswith("mini-gpt2-cpu-fp32-") for r in found)


def test_a_new_name_without_a_config_is_refused_naming_the_registry(suites, tmp_path):
    result = suites.runpytest("copied_suites/numerics", "--model-path", f"nothing={tmp_path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'nothing' is not a registered model (*qwen-7b*) and * holds "
                                 "no config.json to register it from"])

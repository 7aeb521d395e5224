"""The hf port: a HuggingFace directory (remote code included) fed as the reference is fed."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from harness.numerics.teacher_forced import teacher_forced
from harness.ports.hf import HFRunner, check_remote_code, enter_rank
from harness.reference_runner import ReferenceRunner
from harness.verdicts import nan_max
from models.checkpoint import CheckpointError
from tests.conftest import REMOTE_CLASS, remote_code_checkpoint, tiny_checkpoint


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory):
    """alpaca2-tiny's weights beside a modeling file that config.json's auto_map names."""
    return remote_code_checkpoint(tmp_path_factory.mktemp("remote") / "tinyllama")


def ragged_batch(vocab_size: int):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab_size, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :4], mask[2, :9] = 0, 0
    return ids, mask


def max_diff(path, runner) -> float:
    reference = ReferenceRunner(path)
    ids, mask = ragged_batch(runner.vocab_size)
    history, _ = teacher_forced(reference, [runner], ids, mask, steps=4)
    diffs = [(step[0] - step[1]).abs().max().item() for step in history]
    all_logits = (reference.prefill(ids, mask, all_logits=True)
                  - runner.prefill(ids, mask, all_logits=True)).abs()[mask.bool()]
    return nan_max(diffs + [all_logits.max().item()])


def test_remote_code_directory_runs_its_own_class_and_matches_the_reference(remote_dir):
    runner = HFRunner(remote_dir, trust_remote_code=True)
    assert type(runner.model).__name__ == "TinyLlamaForCausalLM"
    assert type(runner.model).__module__.endswith("modeling_tinyllama")
    assert max_diff(tiny_checkpoint("alpaca2-tiny"), runner) <= 1e-5


def test_remote_code_without_trust_is_refused_before_loading(remote_dir, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")
    # Left to itself transformers would load its own LlamaForCausalLM here, not the port.
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(CheckpointError) as error:
        HFRunner(remote_dir)
    message = str(error.value)
    assert "\n" not in message
    assert str(remote_dir / "config.json") in message and REMOTE_CLASS in message
    assert "--trust-remote-code" in message


def test_auto_map_without_a_causal_lm_entry_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"auto_map": {"AutoConfig": "configuration_x.XConfig"}}))
    with pytest.raises(CheckpointError, match=r"config\.json: auto_map has no "
                       r"AutoModelForCausalLM entry \(found: AutoConfig\)"):
        check_remote_code(tmp_path, trust_remote_code=True)


@pytest.mark.parametrize("name", ["alpaca2-tiny", "falcon-tiny", "bloom-tiny"])
def test_plain_directory_matches_the_reference(name):
    """bloom takes no position ids; falcon is multi-query: the reference's feeding serves all."""
    path = tiny_checkpoint(name)
    runner = HFRunner(path)
    assert runner.vocab_size == 49152 and runner.max_positions
    assert max_diff(path, runner) <= 1e-5


def test_reduced_dtype_runs_in_that_dtype_and_returns_float32_cpu_logits():
    runner = HFRunner(tiny_checkpoint("alpaca2-tiny"), dtype=torch.bfloat16)
    assert {p.dtype for p in runner.model.parameters()} == {torch.bfloat16}
    ids, mask = ragged_batch(runner.vocab_size)
    logits = runner.prefill(ids, mask)
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    assert logits.shape == (3, runner.vocab_size)
    assert runner.decode(logits.argmax(-1)).shape == (3, runner.vocab_size)


def make_parts(root: Path, ranks):
    for rank in ranks:
        (root / "part_model" / str(rank)).mkdir(parents=True)
    return root


def test_enter_rank_sets_torchrun_environment_and_picks_the_rank_directory(tmp_path):
    root = make_parts(tmp_path, range(2))
    environ = {"PATH": "/bin"}
    assert enter_rank(root, 1, 2, 29512, environ=environ) == root / "part_model" / "1"
    assert environ == {"PATH": "/bin", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29512"}


@pytest.mark.parametrize("ranks, world_size, expected", [
    (None, 2, r"part_model: not found; an hf port at --tp 2 needs one directory per rank"),
    ([0], 2, r"part_model: holds rank directories 0, expected 0, 1 for --tp 2"),
    ([0, 1, 2], 2, r"holds rank directories 0, 1, 2, expected 0, 1 for --tp 2"),
    ([1, 2], 2, r"holds rank directories 1, 2, expected 0, 1"),
])
def test_enter_rank_refuses_a_layout_without_exactly_the_ranks(tmp_path, ranks, world_size,
                                                              expected):
    if ranks is not None:
        make_parts(tmp_path, ranks)
    environ = {}
    with pytest.raises(CheckpointError, match=expected):
        enter_rank(tmp_path, 0, world_size, 29512, environ=environ)
    assert environ == {}


TP_CODE = Path(__file__).parent / "remote_code" / "modeling_tp_llama.py"
TP_CLASS = "modeling_tp_llama.ParallelLlamaForCausalLM"


def cut_for_tp(source: Path, out: Path, world_size: int) -> Path:
    """`out/part_model/{rank}`: a Llama directory cut as the seeds' weight tool cuts one, each
    rank its heads (q/k/v rows, o_proj columns) and intermediate share (gate/up rows,
    down_proj columns), the rest replicated, with the parallel modeling file and an auto_map
    naming it; `out` itself keeps the whole model."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    state = model.state_dict()
    config = json.loads((source / "config.json").read_text())
    shutil.copytree(source, out)
    rows = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # split the outputs
    columns = ("o_proj", "down_proj")  # split the inputs
    for rank in range(world_size):
        part = out / "part_model" / str(rank)
        part.mkdir(parents=True)
        shard = {}
        for name, tensor in state.items():
            kind = name.split(".")[-2]
            if kind in rows:
                tensor = tensor.chunk(world_size, 0)[rank]
            elif kind in columns:
                tensor = tensor.chunk(world_size, 1)[rank]
            shard[name] = tensor.clone().contiguous()
        from safetensors.torch import save_file

        save_file(shard, part / "model.safetensors")
        rank_config = {**config, "num_attention_heads": config["num_attention_heads"] // world_size,
                       "num_key_value_heads": config["num_key_value_heads"] // world_size,
                       "intermediate_size": config["intermediate_size"] // world_size,
                       "auto_map": {"AutoModelForCausalLM": TP_CLASS}}
        (part / "config.json").write_text(json.dumps(rank_config))
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            if (source / name).exists():
                shutil.copy(source / name, part)
        shutil.copy(TP_CODE, part)
    return out

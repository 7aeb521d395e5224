"""The `hf` port: any HuggingFace causal-LM directory, remote code included, on a torch device.

It is fed exactly as the reference is (`ReferenceRunner`: left padding, positions from the
mask, a growing 2D mask, the model's own `past_key_values`), so the only differences are the
model code, the device and the dtype. A directory whose config.json has `auto_map` runs code
shipped with it (the source documents' `modeling_qwen_ascend.QWenLMHeadModel`): that needs
`trust_remote_code`, refused with a one-line error before anything is loaded.

Tensor parallel: under `--tp N` each rank loads its own `part_model/{rank}` directory with the
environment torchrun would give it, so a seed-style modeling file that calls
`torch.distributed.init_process_group()` itself works unchanged (`enter_rank`).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

import torch
import transformers

from harness.devices import Backend, get_backend
from harness.reference_runner import ReferenceRunner
from models.checkpoint import Checkpoint, CheckpointError, read_config
from models.precision import DTYPE_NAMES, Precision


def remote_code_class(path: str | Path) -> str | None:
    """The class config.json's `auto_map` loads for a causal LM ("module.Class"), or None."""
    config = read_config(path)
    auto_map = config.data.get("auto_map")
    if not auto_map:
        return None
    if not isinstance(auto_map, dict):
        raise CheckpointError(f"{config.path}: auto_map must be an object, found "
                              f"{type(auto_map).__name__}")
    found = auto_map.get("AutoModelForCausalLM")
    if found is None:
        raise CheckpointError(f"{config.path}: auto_map has no AutoModelForCausalLM entry "
                              f"(found: {', '.join(auto_map) or 'none'})")
    return found


def check_remote_code(path: str | Path, trust_remote_code: bool) -> None:
    """Refuse a remote-code directory unless its code is trusted (before loading anything)."""
    found = remote_code_class(path)
    if found is not None and not trust_remote_code:
        raise CheckpointError(f"{Path(path) / 'config.json'}: auto_map loads remote code "
                              f"{found}; pass --trust-remote-code to run it")


def check_hf_directory(path: str | Path, trust_remote_code: bool) -> None:
    """What `HFRunner` will load, checked without loading it: remote code only if trusted; a
    model type transformers has a causal LM for, or remote code that brings one; weight files
    that are whole (headers only)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    check_remote_code(path, trust_remote_code)
    config = read_config(path)
    model_type = config.data.get("model_type")
    if "auto_map" not in config.data and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        what = (f"transformers has no causal LM for model_type {model_type!r}"
                if model_type in CONFIG_MAPPING_NAMES else
                f"model_type {model_type!r} is not one transformers knows")
        hint = ("a Qwen v1 directory needs its remote code (configuration_qwen.py and "
                "modeling_qwen.py, named in auto_map) and --trust-remote-code"
                if model_type == "qwen" else "the hf port cannot load it")
        raise CheckpointError(f"{config.path}: {what} and auto_map names no remote code: "
                              f"{hint}; or run it on the engine (--port engine)")
    checkpoint = Checkpoint(path)
    checkpoint.open_all()
    checkpoint.close()


class HFRunner(ReferenceRunner):
    """A HuggingFace directory on any backend and dtype; float32 CPU logits out.

    Loaded as transformers loads it (remote code included); its forward and its
    prefill/decode/prefill_shared are the reference's own.
    """

    def __init__(self, path: str | Path, *, hardware: str | Backend = "cpu",
                 dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                 device_index: int = 0):
        """device_index: which cuda/npu device (a rank's LOCAL_RANK); unused on the CPU."""
        check_remote_code(path, trust_remote_code)
        self.backend = get_backend(hardware) if isinstance(hardware, str) else hardware
        device = (self.backend.torch_device() if self.backend.name == "cpu"
                  else torch.device(self.backend.name, device_index))
        self.precision = Precision.of(DTYPE_NAMES[dtype], self.backend.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code).to(device).eval()
        check_loaded_dtype(model, dtype, path)
        self._attach(model, device)
        self.vocab_size, self.max_positions = self.config.vocab_size, self.config.max_positions


def check_loaded_dtype(model: torch.nn.Module, dtype: torch.dtype, path) -> None:
    """The model must hold most of its floating-point weights in the case's dtype: remote
    code may cast itself (Qwen v1's `autoset_precision` turns a model whose config.json names
    no precision into bf16), and the case would be recorded under a dtype it did not run.
    (A few modules kept in float32 by their class, as transformers allows, are fine.)"""
    counts: dict[torch.dtype, int] = {}
    for tensor in model.parameters():
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    found = max(counts, key=counts.get) if counts else dtype
    if found != dtype:
        share = counts[found] / sum(counts.values())
        raise CheckpointError(
            f"{path}: asked for {DTYPE_NAMES[dtype]}, the model loaded with {share:.0%} of its "
            f"weights in {DTYPE_NAMES.get(found, found)}: its own code casts it (Qwen v1's "
            "remote code does where config.json sets none of bf16/fp16/fp32 true); set the "
            "case's precision in config.json or run that dtype")


def enter_rank(path: str | Path, rank: int, world_size: int, master_port: int, *,
               master_addr: str = "127.0.0.1",
               environ: MutableMapping[str, str] = os.environ) -> Path:
    """Set the environment torchrun gives rank `rank` of a one-host run and return the
    directory it loads, `path/part_model/{rank}`; one-line errors for a layout that does not
    hold exactly ranks 0..world_size-1."""
    root = Path(path) / "part_model"
    if not root.is_dir():
        raise CheckpointError(f"{root}: not found; an hf port at --tp {world_size} needs one "
                              f"directory per rank, part_model/0..{world_size - 1}")
    found = sorted((p.name for p in root.iterdir() if p.is_dir()), key=lambda n: (len(n), n))
    expected = [str(r) for r in range(world_size)]
    if set(found) != set(expected):
        raise CheckpointError(f"{root}: holds rank directories {', '.join(found) or 'none'}, "
                              f"expected {', '.join(expected)} for --tp {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR=master_addr,
                   MASTER_PORT=str(master_port))
    return root / str(rank)

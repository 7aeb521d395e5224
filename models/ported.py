"""Checkpoints in our own layout: quantized (`llmgate weights quant`) and split per rank
(`llmgate weights cut`, `part_model/{rank}`), as the source documents' `handle_weights.py`
writes them.

Such a directory is a HuggingFace-style checkpoint (`config.json` + `model.safetensors` +
the tokenizer files) whose tensors carry our module names, already fused, quantized and
sliced as the engine holds them, so loading needs no conversion and no re-quantization.
`config.json` keeps the source's fields (so the model is still recognised) and adds:
  - `quantization_config`: {"quant_method": "llmgate-int8", "scheme": "w8a8" | "w8a16",
    "modules": [the quantized layers]};
  - `llmgate`: {"format", "layout": "ported", "model_config", "source" (the float checkpoint it
    came from, where the transformers reference is read), "tensor_parallel": {"rank",
    "world_size"}}.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from models.checkpoint import Checkpoint, CheckpointError, read_json
from models.config import ModelConfig
from models.parallel import SplitError, check_world_size, parallelize_
from models.quant import SCHEMES, cast_floats_, prepare_quantized

FORMAT = 1
QUANT_METHOD = "llmgate-int8"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json")


def is_ported(config: dict) -> bool:
    return isinstance(config.get("llmgate"), dict)


def save(model, out: Path, source: Path, quantization: dict | None = None,
         tensor_parallel: dict | None = None) -> None:
    """Write `model` as a ported checkpoint in `out` (which must exist and be empty)."""
    base = read_json(Path(source) / "config.json")
    config = {k: v for k, v in base.items() if k not in ("llmgate", "quantization_config")}
    config["llmgate"] = {"format": FORMAT, "layout": "ported",
                         "model_config": model.config.as_dict(),
                         "source": str(Path(base.get("llmgate", {}).get("source", source))
                                       .resolve())}
    if tensor_parallel:
        config["llmgate"]["tensor_parallel"] = tensor_parallel
    quantization = quantization or base.get("quantization_config")
    if quantization:
        config["quantization_config"] = quantization
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()
             if tensor is not None}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (Path(source) / name).exists():
            shutil.copy(Path(source) / name, out / name)


def quantization(config: dict, path: Path):
    """(method, quantized layers) of a ported checkpoint's `quantization_config`, if any."""
    q = config.get("quantization_config")
    if q is None:
        return None, []
    if not isinstance(q, dict) or q.get("quant_method") != QUANT_METHOD:
        raise CheckpointError(f"{path}: field 'quantization_config.quant_method' is "
                              f"{q.get('quant_method') if isinstance(q, dict) else q!r}, "
                              f"expected {QUANT_METHOD!r}")
    if q.get("scheme") not in SCHEMES:
        raise CheckpointError(f"{path}: field 'quantization_config.scheme' is "
                              f"{q.get('scheme')!r}, expected one of {', '.join(SCHEMES)}")
    modules = q.get("modules")
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise CheckpointError(f"{path}: field 'quantization_config.modules' must be a list "
                              "of layer names")
    return SCHEMES[q["scheme"]], modules


def scheme_of(config: dict) -> str | None:
    """The quantization scheme a checkpoint's config.json says it was written with, if any."""
    return (config.get("quantization_config") or {}).get("scheme")


def part_dirs(path: Path) -> list[Path] | None:
    """`path/part_model/{0..N-1}` if the checkpoint is split per rank, else None."""
    root = Path(path) / "part_model"
    if not root.is_dir():
        return None
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)


def check_parts(path: Path, world_size: int) -> None:
    """Every rank present, all from one split of `world_size`; else a one-line error."""
    parts = part_dirs(path)
    if parts is None:
        return
    sizes = {}
    for part in parts:
        tp = read_json(part / "config.json").get("llmgate", {}).get("tensor_parallel") or {}
        sizes[part.name] = tp.get("world_size")
        if str(tp.get("rank")) != part.name:
            raise ValueError(f"{part}: its config.json says rank {tp.get('rank')!r}, expected "
                             f"{part.name}")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{path}/part_model: ranks from different world sizes: "
                         + ", ".join(f"{r}: {s}" for r, s in sizes.items()))
    found = next(iter(sizes.values()))
    missing = [str(r) for r in range(found or 0) if str(r) not in sizes]
    if missing:
        raise ValueError(f"{path}/part_model: rank {', '.join(missing)} missing (world size "
                         f"{found})")
    if found != world_size:
        raise ValueError(f"{path}/part_model is split for {found} ranks; run it with --tp "
                         f"{found}, not --tp {world_size}")


def tensor_parallel_of(config: dict) -> tuple[int, int] | None:
    tp = config.get("llmgate", {}).get("tensor_parallel")
    return None if not tp else (tp["rank"], tp["world_size"])


def load(ckpt: Checkpoint, family, dtype: torch.dtype, device):
    """Build the model a ported checkpoint describes and load its tensors by name."""
    config, path = ckpt.config.data, ckpt.config.path
    try:
        cfg = ModelConfig(**config["llmgate"]["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: field 'llmgate.model_config' is not a model "
                              f"configuration ({e})") from None
    method, modules = quantization(config, path)
    tp = tensor_parallel_of(config)
    if tp is not None:
        rank, world_size = tp
        if not dist.is_initialized() or (dist.get_world_size(), dist.get_rank()) != (world_size,
                                                                                     rank):
            raise CheckpointError(
                f"{ckpt.path}: holds rank {rank} of {world_size}; load it as rank {rank} of "
                f"a {world_size}-rank run (--tp {world_size})")
        try:
            check_world_size(cfg, world_size)
        except SplitError as e:
            raise CheckpointError(f"{ckpt.path}: {e}") from None
    with torch.device("meta"):
        model = family.build(cfg)
    if method is not None:
        prepare_quantized(model, method, modules)
    if tp is not None:
        parallelize_(model, *tp)
    cast_floats_(model, dtype)
    model.to_empty(device=device)
    tensors = {**dict(model.named_parameters()), **{n: b for n, b in model.named_buffers()
                                                      if b is not None}}
    with torch.no_grad():
        for name, target in tensors.items():
            # int8 where ours holds int8 (weight_int8), floating point everywhere else
            stored = None if target.is_floating_point() else target.dtype
            target.copy_(ckpt.get(name, tuple(target.shape), stored))
    extra = sorted(set(ckpt.names()) - set(tensors))
    if extra:
        raise CheckpointError(f"{ckpt.path}: tensors this model does not have: "
                              f"{', '.join(extra[:5])}")
    return model

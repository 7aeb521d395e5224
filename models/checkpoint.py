"""Reading HuggingFace checkpoint directories.

A checkpoint is `config.json` plus one of: `model.safetensors`, sharded safetensors with
`model.safetensors.index.json`, `pytorch_model.bin`, or sharded `.bin` with
`pytorch_model.bin.index.json`. Every failure names the file (and the field or tensor) and what
was expected.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Tensors that only quantized checkpoints hold (GPTQ/AWQ, compressed-tensors, Ascend's
# msModelSlim, bitsandbytes, fp8): their weights beside them are not plain floats.
QUANT_PARAMETERS = {"qweight", "qzeros", "scales", "zeros", "g_idx", "SCB", "absmax",
                    "quant_map", "deq_scale", "quant_bias", "weight_scale", "weight_scale_inv",
                    "weight_offset", "weight_zero_point", "weight_packed", "input_scale",
                    "input_offset", "input_zero_point"}
# The integer types of safetensors headers, named as torch names them.
INTEGER_TYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
                 "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64"}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read as the model it claims to be."""


# What Ascend's msModelSlim (the quantizer behind the Bloom document's `handle_weights.py
# --handle-type quant`) writes: int8 weights with per-channel scales and offsets, and for
# W8A8 static activation scales and offsets, made for one device (the document: 310 and 910
# weights are not interchangeable). Either layout, whole or under part_model/{rank}/.
MODELSLIM_FILES = ("quant_model_description.json", "quant_model_weight.safetensors",
                   "quant_weight.npy", "weight_scale.npy", "weight_offset.npy", "deq_scale.npy",
                   "quant_bias.npy", "input_scale.npy", "input_offset.npy",
                   "float_layers_weights.pt")


def modelslim_files(path: Path) -> list[str]:
    """The msModelSlim files in a directory (or its first part_model rank), by name."""
    path = Path(path)
    ranks = sorted((path / "part_model").glob("*/")) if (path / "part_model").is_dir() else []
    where = [path, *ranks[:1]]
    return [str(d.relative_to(path) / name) if d != path else name
            for d in where for name in MODELSLIM_FILES if (d / name).is_file()]


def check_not_modelslim(path: Path) -> None:
    """Refuse an msModelSlim directory, saying what was found: never read it as floats."""
    found = modelslim_files(path)
    if not found:
        return
    description = next((Path(path) / f for f in found
                        if f.endswith("quant_model_description.json")), None)
    kinds = ""
    if description is not None:
        try:
            layers = json.loads(description.read_text())
            counts = Counter(map(str, layers.values() if isinstance(layers, dict) else []))
            kinds = " (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")"
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            kinds = " (unreadable)"
    raise CheckpointError(
        f"{path}: an msModelSlim quantized directory ({', '.join(found)}{kinds}): its int8 "
        "weights, scales and offsets are made for one Ascend device and llmgate does not read "
        "them; give the float checkpoint with --dtype w8a8, or quantize it with `llmgate "
        "weights --handle-type quant`")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


class HFConfig:
    """`config.json` with typed field access whose errors name the file and the field."""

    def __init__(self, data: dict, path: Path):
        self.data, self.path = data, path

    def get(self, *keys: str, kind: type = int, default=None):
        """The first of `keys` present (aliases, e.g. n_embed / hidden_size), else `default`."""
        for key in keys:
            if key in self.data and self.data[key] is not None:
                value = self.data[key]
                if kind is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                    raise CheckpointError(f"{self.path}: field {key!r} is {value!r}, expected "
                                          f"{kind.__name__}")
                return value
        if default is None:
            raise CheckpointError(f"{self.path}: missing field {' or '.join(map(repr, keys))} "
                                  f"(expected {kind.__name__})")
        return default

    def require(self, key: str, allowed: tuple, default) -> None:
        """Fail unless `key` (absent: `default`) is one of the values llmgate implements."""
        value = self.data.get(key, default)
        if value not in allowed:
            raise CheckpointError(f"{self.path}: field {key!r} is {value!r}; llmgate supports "
                                  f"{' or '.join(map(repr, allowed))}")

    def heads(self, width_key: str) -> tuple[int, int]:
        """(num_attention_heads, hidden_size), which must split into heads of the width
        `width_key` gives (where it does): the engine derives the width from the two, so a
        wrong head count is named as such, not as a wrong width."""
        heads, hidden = self.get("num_attention_heads"), self.get("hidden_size")
        width = self.data.get(width_key)
        if heads < 1 or hidden % heads or width not in (None, hidden // heads):
            split = (f"num_attention_heads x {width_key} ({width})" if width is not None
                     else "a multiple of it")
            raise CheckpointError(f"{self.path}: field 'num_attention_heads' is {heads}: "
                                  f"'hidden_size' {hidden} is not {split}")
        return heads, hidden

    def rope_theta(self, *legacy_keys: str) -> float:
        """Base of plain rotary embeddings; scaled variants (linear, NTK, YaRN) are refused."""
        params = self.data.get("rope_parameters") or self.data.get("rope_scaling") or {}
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            raise CheckpointError(f"{self.path}: rope type {rope_type!r} is not supported "
                                  "(expected plain rotary embeddings)")
        if "rope_theta" in params:
            return float(params["rope_theta"])
        return self.get("rope_theta", *legacy_keys, kind=float, default=10000.0)


def read_config(path: str | Path) -> HFConfig:
    """The `config.json` of a checkpoint directory."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    return HFConfig(read_json(path / "config.json"), path / "config.json")


class Checkpoint:
    """Lazy name -> tensor access over the weight files of one checkpoint directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = read_config(self.path)
        self._open: dict[Path, object] = {}
        self.files = self._index()

    def _index(self) -> dict[str, Path]:
        """Map every tensor name to the file that holds it."""
        check_not_modelslim(self.path)
        for index_name in INDEX_FILES:
            index_path = self.path / index_name
            if index_path.exists():
                weight_map = read_json(index_path).get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise CheckpointError(f"{index_path}: expected a non-empty 'weight_map' object")
                files = {name: self.path / shard for name, shard in weight_map.items()}
                for shard in sorted(set(files.values())):
                    if not shard.is_file():
                        raise CheckpointError(f"{index_path}: names shard {shard.name!r}, "
                                              "which does not exist")
                return files
        for single in SINGLE_FILES:
            file = self.path / single
            if file.is_file():
                return {name: file for name in self._open_file(file).keys()}
        raise CheckpointError(f"{self.path}: no weights found (expected one of "
                              f"{', '.join(SINGLE_FILES + INDEX_FILES)})")

    def _open_file(self, file: Path):
        if file not in self._open:
            self._open[file] = (_open_safetensors(file) if file.suffix == ".safetensors"
                                else _load_bin(file))
        return self._open[file]

    def open_all(self) -> None:
        """Open every weight file now (safetensors headers, which must cover the file's data; .bin
        archives memory-mapped), so a truncated or corrupt one is named before a tensor is read."""
        for file in sorted(set(self.files.values())):
            self._open_file(file)

    def slices(self) -> dict[str, object] | None:
        """Every tensor as a lazy safetensors slice (read with `pread` when indexed), the
        form `transformers`' loader takes as a state dict; None unless every file is
        safetensors."""
        if any(file.suffix != ".safetensors" for file in self.files.values()):
            return None
        return {name: self._open_file(file).get_slice(name) for name, file in self.files.items()}

    def names(self) -> list[str]:
        return list(self.files)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def refuse_quantized(self) -> None:
        """Fail on what would load as floats and mean something else: a
        `quantization_config`, quantization parameters, or integer-typed `.weight` tensors.
        (llmgate's own int8 layout is checked by `models/ported.py` instead.)"""
        q = self.config.data.get("quantization_config")
        if q is not None:
            method = q.get("quant_method") if isinstance(q, dict) else q
            raise CheckpointError(f"{self.config.path}: field 'quantization_config.quant_method'"
                                  f" is {method!r}, which llmgate does not implement (it reads "
                                  "float checkpoints, and its own int8 layout from llmgate "
                                  "weights quant)")
        for name, file in self.files.items():
            if name.rsplit(".", 1)[-1] in QUANT_PARAMETERS or ".quant_state." in name:
                raise CheckpointError(f"{file}: tensor {name!r} is a quantization parameter; "
                                      "llmgate reads float checkpoints only")
            if name.endswith(".weight"):
                _check_type(file, name, self._stored_type(name), None)

    def _stored_type(self, name: str) -> str:
        """The tensor's type as torch names it, read from the header alone where possible."""
        handle = self._open_file(self.files[name])
        if hasattr(handle, "get_slice"):
            stored = handle.get_slice(name).get_dtype()  # "F32", "I8", ...: no data read
            return INTEGER_TYPES.get(stored, stored.lower())
        return str(handle[name].dtype).removeprefix("torch.")

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> Tensor:
        """The tensor `name`, which must have `shape` and be of `dtype`, or by default of any
        floating-point type: an integer tensor is quantized data, misread as floats."""
        if name not in self.files:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing "
                                  f"(expected shape {tuple(shape)})")
        file = self.files[name]
        handle = self._open_file(file)
        try:
            tensor = handle.get_tensor(name) if hasattr(handle, "get_tensor") else handle[name]
        except (SafetensorError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{file}: cannot read tensor {name!r} ({e})") from None
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                                  f"expected {tuple(shape)}")
        _check_type(file, name, str(tensor.dtype).removeprefix("torch."),
                    dtype and str(dtype).removeprefix("torch."))
        return tensor

    def close(self) -> None:
        self._open.clear()


def _check_type(file: Path, name: str, found: str, expected: str | None) -> None:
    """`expected` None: any floating-point type (safetensors' F16, BF16, F8_E4M3, ... too)."""
    if found == expected or (expected is None and found not in INTEGER_TYPES.values()):
        return
    why = " (quantized weights are read only in llmgate's own int8 layout)"
    raise CheckpointError(f"{file}: tensor {name!r} is {found}, expected "
                          f"{expected or 'floating point' + why}")


def _open_safetensors(file: Path):
    """A safetensors file read with `pread`: each tensor read is a copy the caller owns. (A
    memory-mapped file's pages would stay resident while it is open: loading would hold the
    checkpoint's bytes beside the model's.)"""
    try:
        handle = safe_open(str(file), framework="pt", device="cpu", backend="pread")
        handle.keys()
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: truncated or corrupt safetensors file ({e})") from None
    return handle


def _load_bin(file: Path) -> dict[str, Tensor]:
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Files from before torch 1.6 (not zip archives) cannot be memory-mapped.
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(f"{file}: truncated or corrupt PyTorch weights file "
                              f"({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a dict of tensors, found {type(state).__name__}")
    return state


def split_interleaved_qkv(fused: Tensor, num_heads: int, head_dim: int) -> Tensor:
    """Per-head interleaved q,k,v rows (Bloom, multi-head Falcon and GPTBigCode) -> [q|k|v]:
    `fused` (H * 3 * D, ...) is ordered head by head as [q_h, k_h, v_h]."""
    per_head = fused.reshape(num_heads, 3, head_dim, *fused.shape[1:])
    return per_head.transpose(0, 1).reshape(fused.shape)

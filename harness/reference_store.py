"""What the numerics gates need of the reference, kept once computed: in memory for the run,
and on disk (`--reference-store DIR`) across runs and hosts.

A reference model is the biggest thing a numerics run holds (a 7B model's fp32 weights are
28 GB) and the slowest thing it runs on a CPU. What the gates read of it is small: the tokens
it fed, its logits at the compared positions, its greedy tokens and the logits of its other
precisions. So a run keeps those for the model it is on, and the runner pool drops the
reference model when another is needed; a big CPU host can fill a store and an NPU host run
with `--reference-mode stored`, never loading a reference.

An entry is one safetensors file: its tensors, and in its metadata the key it was computed
for. The key names everything the outputs depend on (the reference checkpoint's and
tokenizer's content, the prompt and case shape, the token-forcing rule, the thresholds'
version, transformers' and torch's versions); an entry whose key differs from the one asked
for is refused with the first field that differs, and a damaged file is refused by name. The
logits are kept in float32, exactly as computed: a stored run's figures equal a live run's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from harness.cache import locked, sha256

MODES = ("auto", "stored", "live")
ENTRY_FORMAT = 1  # bump when what an entry holds changes meaning
# A checkpoint's digest covers these files (weights, config, tokenizer), not its README.
CONTENT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".tiktoken", ".py")


def _code_digest() -> str:
    """llmgate's own code that shapes what the reference computes (how it is loaded, fed,
    fake-quantized): an entry from other such code is for another key."""
    digest = hashlib.sha256()
    for name in ("reference.py", "runners.py", "hf_layout.py"):
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:16]


REFERENCE_CODE = _code_digest()


class ReferenceStoreError(Exception):
    """A stored entry is missing (in `stored` mode), damaged or for another key."""


def directory_digest(directory: Path, cache: Path | None = None) -> str:
    """SHA-256 over the content files of a checkpoint directory (names and digests), each file
    hashed once per (size, mtime) and remembered in `cache` (a JSON file): hashing 30 GB of
    weights takes minutes, and a store is consulted every run."""
    known = json.loads(cache.read_text()) if cache and cache.is_file() else {}
    entries, changed = [], False
    for file in sorted(p for p in Path(directory).rglob("*")
                       if p.is_file() and p.suffix in CONTENT_SUFFIXES):
        stat = file.stat()
        stamp = f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if stamp not in known:
            known[stamp], changed = sha256(file), True
        entries.append((str(file.relative_to(directory)), known[stamp]))
    if cache and changed:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with locked(cache.with_suffix(".lock")):
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known))
            tmp.replace(cache)
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:24]


class ReferenceStore:
    """Reference outputs by key: the run's memory first, then the directory (if any).

    mode: auto (a matching entry is used, a missing one computed and written), stored (never
    compute: a missing entry is an error naming its key and how to fill it), live (compute,
    ignore the directory)."""

    def __init__(self, directory: Path | None = None, mode: str = "auto"):
        if mode not in MODES:
            raise ValueError(f"--reference-mode {mode!r}: expected one of {', '.join(MODES)}")
        if mode == "stored" and directory is None:
            raise ValueError("--reference-mode stored needs --reference-store DIR")
        self.directory = Path(directory) if directory else None
        self.mode = mode
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self._model: str | None = None
        self.used: dict[str, int] = {"memory": 0, "stored": 0, "computed": 0}

    def path(self, key: dict) -> Path:
        return self.directory / key["model"] / f"{key['kind']}-{key_digest(key)}.safetensors"

    def get(self, key: dict, compute: Callable[[], dict[str, torch.Tensor]]
            ) -> dict[str, torch.Tensor]:
        """The tensors for `key`: remembered, stored or computed by `compute()`."""
        name = key_digest(key)
        if key["model"] != self._model:  # cases run model by model: keep one model's outputs
            self._memory.clear()
            self._model = key["model"]
        if name in self._memory:
            self.used["memory"] += 1
            return self._memory[name]
        tensors = None
        if self.directory is not None and self.mode != "live":
            tensors = self._read(key)
            if tensors is None and self.mode == "stored":
                raise ReferenceStoreError(
                    f"--reference-mode stored: no entry {self.path(key)} for {describe(key)}; "
                    "fill the store where the reference runs (the same command with "
                    "--reference-mode auto)")
        if tensors is not None:
            self.used["stored"] += 1
        else:
            tensors = {k: v.detach().cpu().contiguous() for k, v in compute().items()}
            self.used["computed"] += 1
            if self.directory is not None and self.mode == "auto":
                self._write(key, tensors)
        self._memory[name] = tensors
        return tensors

    def _read(self, key: dict) -> dict[str, torch.Tensor] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                stored = json.loads((f.metadata() or {}).get("llmgate_key", "null"))
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ReferenceStoreError(f"{path}: not a readable reference entry "
                                      f"({type(e).__name__}: {e})") from None
        if stored != key:
            field = _first_difference(stored, key)
            raise ReferenceStoreError(f"{path}: an entry for another key ({field}); remove it "
                                      "or point --reference-store elsewhere")
        return tensors

    def _write(self, key: dict, tensors: dict[str, torch.Tensor]) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata={"llmgate_key": json.dumps(key, sort_keys=True)})
        tmp.replace(path)  # whole or absent: a reader never sees half an entry


def describe(key: dict) -> str:
    shown = ("kind", "model", "dtype", "batch", "seqlen", "out")
    return ", ".join(f"{k} {key[k]}" for k in shown if k in key)


def _first_difference(stored, key: dict) -> str:
    if not isinstance(stored, dict):
        return "it carries no llmgate key"
    for field in sorted(set(stored) | set(key)):
        if stored.get(field) != key.get(field):
            return f"{field} is {stored.get(field)!r}, expected {key.get(field)!r}"
    return "its key differs"

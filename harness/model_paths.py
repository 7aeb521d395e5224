"""`--model-path NAME=DIR`: each directory checked as the port that runs it reads it, and a
NAME the registry does not list registered from its config.json (`harness.settings` calls
these at start-up)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.checkpoints import verify_checkpoint, weights_layout
from harness.ports.options import PortSettings
from harness.values import check_names
from models.checkpoint import CheckpointError, check_not_modelslim, read_config, read_json
from models.config import REGISTRY, TRANSFORMERS_ONLY, ModelConfig, register
from models.loading import model_config
from models.ported import check_parts, part_dirs, tensor_parallel_of

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def register_model_paths(items: list[str] | None) -> dict[str, str | None]:
    """Register each --model-path NAME the registry does not list from its directory's
    config.json; returns, per such NAME, why the engine cannot run it (None: it can)."""
    problems = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not path or name in REGISTRY:
            continue  # checked, with the registered ones, by `model_paths`
        if not MODEL_NAME.fullmatch(name):
            raise pytest.UsageError(f"--model-path {name}={path}: a new model's name is letters, "
                                    "digits, '.', '_' and '-' (it becomes a case id's first "
                                    "token)")
        directory = Path(path).expanduser()
        if not (directory / "config.json").is_file() and not (directory / "part_model").is_dir():
            raise pytest.UsageError(f"--model-path {name}={path}: {name!r} is not a registered "
                                    f"model ({', '.join(REGISTRY)}) and {directory} holds no "
                                    "config.json to register it from")
        try:
            problems[name] = register_directory(name, directory)
        except (CheckpointError, ValueError) as e:
            raise pytest.UsageError(f"--model-path {name}: {e}") from None
    return problems


def model_paths(items: list[str] | None, ports: PortSettings | None = None,
                engine_problems: dict[str, str | None] | None = None) -> dict[str, Path]:
    """--model-path NAME=DIR, each DIR checked as the engine reads it where the engine runs
    NAME (an hf or plug-in port loads the directory its own way). `engine_problems`: why the
    engine cannot run a model registered from its directory (`register_model_paths`)."""
    paths = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise pytest.UsageError(f"--model-path {item!r}: expected NAME=DIR")
        check_names("--model-path", [name], REGISTRY)
        directory = Path(path).expanduser()
        if not directory.is_dir():
            raise pytest.UsageError(f"--model-path {name}={path}: directory not found")
        engine = ports is None or any(s.kind == "engine" for s in ports.of(name))
        problem = (engine_problems or {}).get(name)
        if engine and problem:
            raise pytest.UsageError(f"--model-path {name}={path}: the engine does not run this "
                                    f"architecture ({problem}); run it on transformers with "
                                    f"--port {name}=hf")
        try:
            check_not_modelslim(directory)  # whatever the port: never read as floats
            if engine:
                rank_directory(name, path, directory)
                verify_checkpoint(name, directory)
                check_parts(directory, weights_layout(directory).world_size)
        except (CheckpointError, ValueError) as e:
            raise pytest.UsageError(f"--model-path {name}: {e}") from None
        paths[name] = directory
    return paths


def rank_directory(name: str, given: str, directory: Path) -> None:
    """A rank's part of a split checkpoint runs only within its group: refuse it at start-up
    with the directory to give instead (its config says its rank and world size)."""
    if part_dirs(directory) is not None or not (directory / "config.json").is_file():
        return  # a whole split checkpoint (part_model/ alone), or not a checkpoint at all
    split = tensor_parallel_of(read_json(directory / "config.json"))
    if split:
        rank, world = split
        raise pytest.UsageError(f"--model-path {name}={given}: rank {rank} of a checkpoint split "
                                f"for {world} ranks; give the directory that holds part_model/ "
                                f"({directory.parent.parent}) and --tp {world}")


def check_stored_weights(paths: dict[str, Path], dtypes: list[str], tp: int) -> None:
    """A quantized checkpoint runs as its scheme only; a split one at its own --tp."""
    for name, path in paths.items():
        weights = weights_layout(path)
        if weights.scheme and dtypes and weights.scheme not in dtypes:
            raise pytest.UsageError(f"--model-path {name}={path} holds {weights.scheme} weights "
                                    f"but --dtype asks for {','.join(dtypes)}; add --dtype "
                                    f"{weights.scheme}")
        if weights.world_size and weights.world_size != tp:
            raise pytest.UsageError(f"--model-path {name}={path}: part_model is split for "
                                    f"{weights.world_size} ranks; run it with --tp "
                                    f"{weights.world_size}, not --tp {tp}")


def register_directory(name: str, path: Path) -> str | None:
    """Register a model the registry does not list from its checkpoint's config.json; returns
    why the engine cannot run it (None where it can: an architecture of its families).

    Such a model is judged by the pretrained limits, like every model but the tiny ones."""
    config = read_config(weights_layout(path).files)
    try:
        register(model_config(config, name))
        return None
    except CheckpointError as engine_problem:
        register(transformers_config(config.path.parent, name))
        return str(engine_problem)


def transformers_config(directory: Path, name: str) -> ModelConfig:
    """The structure the suites need of an architecture only transformers runs, read through
    transformers' own config class (no remote code: the reference is transformers' code)."""
    import transformers

    from harness.reference_runner import PortConfig

    try:
        hf = transformers.AutoConfig.from_pretrained(directory)
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{directory / 'config.json'}: transformers cannot read it "
                              f"({str(e).splitlines()[0]})") from None
    try:
        port = PortConfig.of(hf)
        heads = hf.num_attention_heads
    except (AttributeError, TypeError, ZeroDivisionError) as e:
        raise CheckpointError(f"{directory / 'config.json'}: not a transformer llmgate can "
                              f"size ({e})") from None
    eps = next((getattr(hf, k) for k in ("rms_norm_eps", "layer_norm_eps",
                                         "layer_norm_epsilon") if hasattr(hf, k)), 0.0)
    return ModelConfig(
        name, TRANSFORMERS_ONLY, port.vocab_size, hf.hidden_size, port.num_layers,
        heads, port.num_kv_heads, getattr(hf, "intermediate_size", None) or 0,
        port.max_positions or 0, float(eps), bool(getattr(hf, "tie_word_embeddings", False)))

"""The run's settings, built from the llmgate options and checked before any model loads.

Every option error is a one-line `pytest.UsageError` at start-up that names the option, the
value and what was expected: a run never discovers a bad option one test at a time.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import pytest

from harness.cases import Case
from harness.checkpoints import default_cache_dir, embedded_checkpoint, verify_checkpoint
from harness.devices import BACKENDS, DTYPES
from models.checkpoint import CheckpointError
from models.config import EMBEDDED_MODELS, REGISTRY, get_config

# New tokens of the numerics suite's greedy-generation test (fp32 only).
GREEDY_NEW_TOKENS = 32


def split_values(values: list[str] | None) -> list[str]:
    """Repeatable options also take comma-separated lists: --dtype fp32,bf16."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def check_names(option: str, values: list[str], valid) -> None:
    for value in values:
        if value not in valid:
            raise pytest.UsageError(f"{option} {value!r} is unknown; valid: {', '.join(valid)}")


def positive_int(option: str, item: str, minimum: int = 1) -> int:
    """An ASCII decimal integer >= minimum ('²' or '٣' are digits to Python, not to us)."""
    if not re.fullmatch(r"[0-9]+", item.strip()) or int(item) < minimum:
        raise pytest.UsageError(f"{option} {item!r}: expected an integer >= {minimum}")
    return int(item)


def int_list(option: str, values: list[str] | None, default: list[int]) -> list[int]:
    parsed = [positive_int(option, item) for item in split_values(values)]
    return list(dict.fromkeys(parsed)) or default


def writable_dir(option: str, path: Path) -> Path:
    """Create `path` if needed and prove it takes a file; else a usage error."""
    if path.exists() and not path.is_dir():
        raise pytest.UsageError(f"{option} {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise pytest.UsageError(f"{option} {path}: not writable ({e.strerror or e})") from None
    return path


def model_paths(items: list[str] | None) -> dict[str, Path]:
    paths = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise pytest.UsageError(f"--model-path {item!r}: expected NAME=DIR")
        check_names("--model-path", [name], REGISTRY)
        directory = Path(path).expanduser()
        if not directory.is_dir():
            raise pytest.UsageError(f"--model-path {name}={path}: directory not found")
        try:
            verify_checkpoint(name, directory)
        except CheckpointError as e:
            raise pytest.UsageError(f"--model-path {name}: {e}") from None
        paths[name] = directory
    return paths


@dataclass
class Settings:
    models: list[str]
    model_paths: dict[str, Path]
    hardware: list[str]
    dtypes: list[str]
    batches: list[int]
    seqlens: list[int]
    decode_steps: int
    require_hardware: bool
    cache_dir: Path
    results_root: Path
    _resolved: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        opt = config.getoption
        paths = model_paths(opt("--model-path"))
        models = split_values(opt("--model"))
        check_names("--model", models, REGISTRY)
        for name in paths:
            if models and name not in models:
                raise pytest.UsageError(f"--model-path {name}=... is given but --model does not "
                                        f"select {name}; add --model {name}")
        # --model-path alone selects its models; with neither, the embedded defaults run.
        models = list(dict.fromkeys(models or list(paths) or list(EMBEDDED_MODELS)))
        hardware = split_values(opt("--hardware")) or ["cpu"]
        check_names("--hardware", hardware, BACKENDS)
        dtypes = split_values(opt("--dtype")) or ["fp32", "bf16"]
        check_names("--dtype", dtypes, DTYPES)
        decode_steps = positive_int("--decode-steps", str(opt("--decode-steps")))
        cache_dir = Path(opt("--cache-dir") or default_cache_dir()).expanduser()
        results = Path(opt("--results-dir") or config.rootpath / "reports").expanduser()
        settings = cls(models, paths, hardware, dtypes,
                       int_list("--batch", opt("--batch"), [1, 4]),
                       int_list("--seqlen", opt("--seqlen"), [32, 128]),
                       decode_steps, opt("--require-hardware"),
                       writable_dir("--cache-dir", cache_dir),
                       writable_dir("--results-dir", results))
        settings.check_lengths()
        return settings

    def length_requests(self) -> list[tuple[int, str]]:
        """(tokens, what asks for them): the longest sequence each check will run."""
        requests = [(max(self.seqlens) + self.decode_steps,
                     f"--seqlen {max(self.seqlens)} + --decode-steps {self.decode_steps}")]
        if "fp32" in self.dtypes:
            requests.append((min(self.seqlens) + GREEDY_NEW_TOKENS,
                             f"--seqlen {min(self.seqlens)} + {GREEDY_NEW_TOKENS} generated "
                             "tokens (greedy generation)"))
        return requests

    def check_lengths(self) -> None:
        for model in self.models:
            limit = get_config(model).max_positions
            for tokens, what in self.length_requests():
                if tokens > limit:
                    raise pytest.UsageError(f"{model} has {limit} positions; {what} = {tokens} "
                                            "tokens do not fit")

    def cases(self, *, dtypes=None, batches=None, seqlens=None, out=None) -> list[Case]:
        """The grid, model-major so that each model is loaded once per process."""
        out = self.decode_steps if out is None else out
        return [Case(m, h, d, b, s, out) for m, h, d, b, s in product(
            self.models, self.hardware, dtypes or self.dtypes, batches or self.batches,
            seqlens or self.seqlens)]

    def has_pretrained(self, model: str) -> bool:
        return model in self.model_paths or model == "smollm2-135m"

    def checkpoint(self, model: str) -> Path:
        """Weights for a model: --model-path, else the embedded cache; skip with a hint.

        Resolved (verified or built) once per process, not once per test.
        """
        if model not in self._resolved:
            if model in self.model_paths:
                self._resolved[model] = self.model_paths[model]
            elif model not in EMBEDDED_MODELS:
                pytest.skip(f"{model}: no weights; pass --model-path {model}=/path/to/checkpoint")
            else:
                self._resolved[model] = embedded_checkpoint(model, self.cache_dir)
        return self._resolved[model]

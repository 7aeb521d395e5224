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

from harness.accuracy.options import DEFAULT_BATCH, AccuracySettings
from harness.baselines import (
    BASELINES_DIR,
    BaselineError,
    accuracy_tables,
    ours_baselines,
    perf_tables,
)
from harness.cases import Case
from harness.checkpoints import default_cache_dir, embedded_checkpoint, verify_checkpoint
from harness.devices import BACKENDS, DTYPES
from harness.perf.options import PerfSettings
from harness.values import check_names, int_list, positive_int, split_values
from models.checkpoint import CheckpointError
from models.config import EMBEDDED_MODELS, REGISTRY, get_config

# New tokens of the numerics suite's greedy-generation test (fp32 only).
GREEDY_NEW_TOKENS = 32


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


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    match = re.fullmatch(r"([0-9]+)/([0-9]+)", value.strip())
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise pytest.UsageError(f"--shard {value!r}: expected K/N with 1 <= K <= N, e.g. 2/4")
    return int(match.group(1)), int(match.group(2))


def baselines_dir(option: str | None) -> Path:
    """The stored baselines, every file parsed now: a damaged one is a start-up error."""
    root = Path(option).expanduser() if option else BASELINES_DIR
    if not root.is_dir():
        raise pytest.UsageError(f"--baselines-dir {root}: directory not found")
    try:
        perf_tables(root)
        accuracy_tables(root)
        ours_baselines(root, "perf")
        ours_baselines(root, "accuracy")
    except BaselineError as e:
        raise pytest.UsageError(str(e)) from None
    return root


@dataclass
class Settings:
    """The selection and options of a run. Suites share the models, hardware and options;
    where a suite has its own default (perf's batches and dtypes, the models it skips with a
    hint), the `*_given` fields say what the user actually asked for."""

    models: list[str]
    perf_models: list[str]
    model_paths: dict[str, Path]
    hardware: list[str]
    dtypes_given: list[str]
    batches_given: list[int]
    seqlens: list[int]
    decode_steps: int
    require_hardware: bool
    cache_dir: Path
    results_root: Path
    perf: PerfSettings
    accuracy: AccuracySettings
    shard: tuple[int, int] | None = None  # (K, N): this host runs the K-th of N shards
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
        # --model-path alone selects its models; with neither, the embedded defaults run,
        # and perf also lists the real models (skipped with a hint) next to its seed tables.
        given = list(dict.fromkeys(models or list(paths)))
        hardware = split_values(opt("--hardware")) or ["cpu"]
        check_names("--hardware", hardware, BACKENDS)
        dtypes = split_values(opt("--dtype"))
        check_names("--dtype", dtypes, DTYPES)
        batches = int_list("--batch", opt("--batch"), [])
        cache_dir = Path(opt("--cache-dir") or default_cache_dir()).expanduser()
        results = Path(opt("--results-dir") or config.rootpath / "reports").expanduser()
        settings = cls(
            models=given or list(EMBEDDED_MODELS), perf_models=given or list(REGISTRY),
            model_paths=paths, hardware=hardware, dtypes_given=dtypes, batches_given=batches,
            seqlens=int_list("--seqlen", opt("--seqlen"), [32, 128]),
            decode_steps=positive_int("--decode-steps", str(opt("--decode-steps"))),
            require_hardware=opt("--require-hardware"),
            cache_dir=writable_dir("--cache-dir", cache_dir),
            results_root=writable_dir("--results-dir", results),
            perf=PerfSettings.from_config(config, batches, baselines_dir(opt("--baselines-dir"))),
            accuracy=AccuracySettings.from_config(config), shard=parse_shard(opt("--shard")))
        settings.check_lengths()
        return settings

    @property
    def dtypes(self) -> list[str]:
        return self.dtypes_given or ["fp32", "bf16"]

    @property
    def batches(self) -> list[int]:
        return self.batches_given or [1, 4]

    def length_requests(self) -> list[tuple[list[str], int, str]]:
        """(models, tokens, what asks for them): the longest sequence each check will run."""
        requests = [(self.models, max(self.seqlens) + self.decode_steps,
                     f"--seqlen {max(self.seqlens)} + --decode-steps {self.decode_steps}")]
        if "fp32" in self.dtypes:
            requests.append((self.models, min(self.seqlens) + GREEDY_NEW_TOKENS,
                             f"--seqlen {min(self.seqlens)} + {GREEDY_NEW_TOKENS} generated "
                             "tokens (greedy generation)"))
        requests += [(self.perf_models, tokens, what)
                     for tokens, what in self.perf.length_requests()]
        return requests

    def check_lengths(self) -> None:
        for models, tokens, what in self.length_requests():
            for model in models:
                limit = get_config(model).max_positions
                if tokens > limit:
                    raise pytest.UsageError(f"{model} has {limit} positions; {what} = {tokens} "
                                            "tokens do not fit")

    def cases(self, *, dtypes=None, batches=None, seqlens=None, out=None) -> list[Case]:
        """The numerics grid, model-major so that each model is loaded once per process."""
        out = self.decode_steps if out is None else out
        return [Case(m, h, d, b, s, out) for m, h, d, b, s in product(
            self.models, self.hardware, dtypes or self.dtypes, batches or self.batches,
            seqlens or self.seqlens)]

    def perf_cases(self) -> list[Case]:
        """The perf grid: batches x (in, out) pairs, or batch "max" with --max-batch."""
        batches = ["max"] if self.perf.max_batch else self.perf.batches
        return [Case(m, h, d, b, i, o) for m, h, d, b, (i, o) in product(
            self.perf_models, self.hardware, self.dtypes_given or ["fp32"], batches,
            self.perf.pairs)]

    def accuracy_cases(self, task: str) -> list[Case]:
        """A task's cases; the reference runner (transformers) runs on the CPU only."""
        from harness.accuracy.case import shots_for

        acc = self.accuracy
        if task not in acc.tasks:
            return []
        reference = acc.runner == "reference"
        tags = ((f"n{acc.samples}",) if task == "humaneval"
                else (f"{shots_for(task, acc)}shot",)) + (("reference",) if reference else ())
        return [Case(m, h, d, b, task=task, tags=tags) for m, h, d, b in product(
            self.models, ["cpu"] if reference else self.hardware, self.dtypes_given or ["fp32"],
            self.batches_given or [DEFAULT_BATCH])]

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

"""The run's settings, built from the llmgate options and checked before any model loads.

Every option error is a one-line `pytest.UsageError` at start-up that names the option, the
value and what was expected: a run never discovers a bad option one test at a time.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType

import pytest

from harness.baselines import (
    BASELINES_DIR,
    BaselineError,
    accuracy_tables,
    ours_baselines,
    perf_tables,
)
from harness.checkpoints import default_cache_dir, weights_layout
from harness.devices import ALL_DTYPES, BACKENDS, QUANTIZED
from harness.model_paths import check_stored_weights, model_paths, register_model_paths
from harness.port_checks import check_ports, check_selected, hf_int8_refusal, port_option
from harness.ports.options import PortSettings, PortSpec
from harness.results import results_root
from harness.values import MAX_BATCH, check_names, int_list, positive_int, split_values, unique
from models.config import EMBEDDED_MODELS, REGISTRY, get_config
from models.parallel import SplitError, check_world_size

DEFAULT_SEQLENS = [32, 128]


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


def check_tp(models: list[str], tp: int) -> None:
    """Every model asked for by name must split over --tp ranks."""
    for model in models:
        try:
            check_world_size(get_config(model), tp)
        except SplitError as e:
            raise pytest.UsageError(f"--tp {tp}: {e}") from None


def reference_options(store: str | None, mode: str | None, localize: bool = False) -> dict:
    """--reference-store DIR and --reference-mode (auto with a store, else live)."""
    if mode == "stored" and localize:
        raise pytest.UsageError("--localize re-runs cases on the reference model, which "
                                "--reference-mode stored never loads; use --reference-mode "
                                "auto or live")
    if mode == "stored" and not store:
        raise pytest.UsageError("--reference-mode stored: give the store with "
                                "--reference-store DIR")
    if mode == "stored" and not Path(store).expanduser().is_dir():
        raise pytest.UsageError(f"--reference-store {store}: directory not found (stored mode "
                                "reads entries, it writes none)")
    if not store:
        return {"reference_store": None, "reference_mode": "live"}
    directory = Path(store).expanduser()
    if mode != "stored":
        writable_dir("--reference-store", directory)
    return {"reference_store": directory, "reference_mode": mode or "auto"}


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


@cache
def stored_scheme(path: Path) -> str | None:
    """The int8 scheme of the checkpoint in `path` (None: float weights), read once."""
    return weights_layout(path).scheme


@dataclass(frozen=True)
class Settings:
    """The run-wide core of a run's selection and options, a value that imports no suite.
    Suites share the models, hardware and options; where a suite has its own default (perf's
    batches and dtypes), the `*_given` fields say what the user actually asked for. Each
    suite's own settings are in `suites` by name (`harness.suites` builds them)."""

    models: list[str]
    models_given: list[str]  # --model, else --model-path's models ([]: neither given)
    model_paths: dict[str, Path]
    hardware: list[str]
    dtypes_given: list[str]
    batches_given: list[int]
    seqlens: list[int]
    decode_steps: int
    require_hardware: bool
    cache_dir: Path
    results_root: Path
    baselines_dir: Path
    ports: PortSettings = field(default_factory=PortSettings)
    shard: tuple[int, int] | None = None  # (K, N): this host runs the K-th of N shards
    tp: int = 1  # tensor-parallel ranks
    quantize_lm_head: bool = False
    registered: dict[str, Path] = field(default_factory=dict)  # models read off --model-path
    reference_store: Path | None = None  # --reference-store
    reference_mode: str = "live"  # --reference-mode
    localize: bool = False  # --localize: every teacher-forced case, not only failing ones
    suites: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        opt = config.getoption
        registered = register_model_paths(opt("--model-path"))
        ports = PortSettings.from_config(config, REGISTRY)
        paths = model_paths(opt("--model-path"), ports, registered)
        check_ports(ports, unique(split_values(opt("--dtype"), "--dtype")),
                    positive_int("--tp", str(opt("--tp"))))
        models = unique(split_values(opt("--model"), "--model"))
        check_names("--model", models, REGISTRY)
        for name in paths:
            if models:
                check_selected(f"--model-path {name}=...", name, models)
        # --model-path alone selects its models; with neither, the embedded defaults run,
        # and perf also lists the real models (skipped with a hint) next to its seed tables.
        given = models or list(paths)
        for name, specs in ports.per_model.items():
            for spec in specs:
                check_selected(port_option(name, spec), name, given or list(EMBEDDED_MODELS),
                               default=not given)
        hardware = unique(split_values(opt("--hardware"), "--hardware")) or ["cpu"]
        check_names("--hardware", hardware, BACKENDS)
        dtypes = unique(split_values(opt("--dtype"), "--dtype"))
        check_names("--dtype", dtypes, ALL_DTYPES)
        tp = positive_int("--tp", str(opt("--tp")))
        check_stored_weights({n: p for n, p in paths.items()
                              if any(s.kind == "engine" for s in ports.of(n))}, dtypes, tp)
        if tp > 1:
            check_tp(given, tp)
        batches = int_list("--batch", opt("--batch"), [], maximum=MAX_BATCH)
        seqlens = int_list("--seqlen", opt("--seqlen"), [])
        cache_dir = Path(opt("--cache-dir") or default_cache_dir()).expanduser()
        results = results_root(opt("--results-dir"), config.rootpath)
        return cls(
            models=given or list(EMBEDDED_MODELS), models_given=given,
            model_paths=paths, hardware=hardware, dtypes_given=dtypes, batches_given=batches,
            seqlens=seqlens or DEFAULT_SEQLENS,
            decode_steps=positive_int("--decode-steps", str(opt("--decode-steps"))),
            require_hardware=opt("--require-hardware"),
            cache_dir=writable_dir("--cache-dir", cache_dir),
            results_root=writable_dir("--results-dir", results),
            baselines_dir=baselines_dir(opt("--baselines-dir")),
            shard=parse_shard(opt("--shard")),
            tp=tp, quantize_lm_head=opt("--quantize-lm-head"), ports=ports,
            localize=opt("--localize"),
            registered={name: paths[name] / "config.json" for name in registered},
            **reference_options(opt("--reference-store"), opt("--reference-mode"),
                                opt("--localize")))

    @property
    def dtypes(self) -> list[str]:
        return self.dtypes_given or ["fp32", "bf16", *QUANTIZED]

    def model_dtypes(self, model: str, dtypes: list[str], spec=None) -> list[str]:
        """`dtypes` this model runs on port `spec` (default: the engine): a quantized
        checkpoint only as its own scheme (whatever the suite's default; a --dtype without it
        is refused at start-up); a served port its thresholds profile (the server's weights
        are its own). A plug-in gets every dtype (its factory is given the int8 scheme); an
        hf port's int8 cases stay in the grid to be skipped with the reason
        (`int8_problem`), never dropped without a word."""
        spec = spec or PortSpec()
        if spec.served:
            return [self.ports.profile_of(spec)]
        stored = (stored_scheme(self.model_paths[model]) if spec.kind == "engine"
                  and model in self.model_paths else None)
        return [stored] if stored else dtypes

    def int8_problem(self, case) -> str | None:
        """Why `case`'s port cannot run its int8 dtype: an hf port loads floats."""
        if case.precision.scheme and self.port(case).kind == "hf":
            return (f"{hf_int8_refusal([case.dtype])} (int8 runs on the engine or a plug-in "
                    "port)")
        return None

    @property
    def tags(self) -> tuple[str, ...]:
        """Id tokens every case of this run carries: `tp2` for a two-rank run."""
        return (f"tp{self.tp}",) if self.tp > 1 else ()

    def config_source(self, model: str) -> str:
        """Where the model's structure came from: the registry, or the config.json of the
        --model-path directory it was registered from."""
        return str(self.registered.get(model, "registry"))

    def port(self, case) -> PortSpec:
        """The port that runs `case`."""
        return self.ports.spec(case.model, case.port)

    def tp_problem(self, model: str) -> str | None:
        """Why `model` cannot run at this --tp (a default model that does not split)."""
        try:
            check_world_size(get_config(model), self.tp)
        except SplitError as e:
            return f"{e} (tensor parallelism: --tp {self.tp})"
        return None

    @property
    def batches(self) -> list[int]:
        return self.batches_given or [1, 4]

"""The run's settings, built from the llmgate options and checked before any model loads.

Every option error is a one-line `pytest.UsageError` at start-up that names the option, the
value and what was expected: a run never discovers a bad option one test at a time.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.accuracy.options import AccuracySettings
from harness.baselines import (
    BASELINES_DIR,
    BaselineError,
    accuracy_tables,
    ours_baselines,
    perf_tables,
)
from harness.checkpoints import (
    Weights,
    default_cache_dir,
    embedded_checkpoint,
    register_directory,
    verify_checkpoint,
    weights_layout,
)
from harness.devices import ALL_DTYPES, BACKENDS, QUANTIZED
from harness.numerics import grid as numerics_grid
from harness.perf import grid as perf_grid
from harness.perf.options import PerfSettings
from harness.ports.hf import check_hf_directory, check_remote_code, enter_rank
from harness.ports.options import PortSettings, PortSpec
from harness.results import results_root
from harness.values import MAX_BATCH, check_names, int_list, positive_int, split_values, unique
from models.checkpoint import Checkpoint, CheckpointError, check_not_modelslim, read_json
from models.config import EMBEDDED_MODELS, REGISTRY, get_config
from models.parallel import SplitError, check_world_size
from models.ported import check_parts, part_dirs, tensor_parallel_of

DEFAULT_SEQLENS = [32, 128]
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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


def port_option(name: str | None, spec: PortSpec) -> str:
    """The --port option as given, for messages."""
    return f"--port {name + '=' if name else ''}{spec.given}"


def check_ports(ports: PortSettings, dtypes: list[str], tp: int) -> None:
    """An hf port runs float dtypes; the engine and hf ports split over --tp ranks."""
    for name, spec in [*((None, s) for s in ports.default),
                       *((n, s) for n, specs in ports.per_model.items() for s in specs)]:
        what = port_option(name, spec)
        if spec.kind == "hf" and set(dtypes) & set(QUANTIZED):
            raise pytest.UsageError(f"{what}: {hf_int8_refusal(dtypes)}")
        if spec.kind not in ("engine", "hf") and tp > 1:
            raise pytest.UsageError(f"{what}: --tp {tp} runs the engine or an hf port's "
                                    "part_model/{rank} directories")


def hf_int8_refusal(dtypes: list[str]) -> str:
    """Why an hf port does not run these int8 `dtypes` (it loads the float weights)."""
    return (f"an hf port runs fp32, bf16 or fp16, not "
            f"{','.join(d for d in dtypes if d in QUANTIZED)}")


def check_selected(option: str, name: str, selected: list[str], default: bool = False) -> None:
    """A per-model option for a model the run does not select would be silently ignored.
    default: `selected` is the embedded models (no --model, no --model-path)."""
    if name not in selected:
        raise pytest.UsageError(f"{option} is given but --model does not select {name}"
                                f"{' (default: the embedded models)' if default else ''}; "
                                f"add --model {name}")


def check_port_directories(settings: Settings) -> None:
    """What an hf or plug-in port loads, checked before any case: remote code only with
    --trust-remote-code; for hf, each directory (each rank's under --tp, an embedded
    checkpoint too) one transformers can build and whose weight files are whole. Reads
    configs and weight headers only."""
    ports, paths, tp = settings.ports, settings.model_paths, settings.tp
    for model in dict.fromkeys([*settings.models, *settings.perf_models]):
        hf = next((s for s in ports.of(model) if s.kind == "hf"), None)
        plugin = any(s.kind == "plugin" for s in ports.of(model))
        if not (hf and (model in paths or model in EMBEDDED_MODELS) or plugin and model in paths):
            continue  # nothing to check (a model without weights skips with a hint)
        given = (f"--model-path {model}" if model in paths else
                 f"{port_option(model if model in ports.per_model else None, hf)} ({model}'s "
                 "embedded checkpoint)")
        try:
            path = settings.port_path(model)
            if hf and tp > 1:  # each rank loads its own directory
                for rank in range(tp):
                    check_hf_directory(enter_rank(path, rank, tp, 0, environ={}),
                                       ports.trust_remote_code)
            elif hf:
                check_hf_directory(path, ports.trust_remote_code)
            else:  # a plug-in loads it its own way; the transformers reference reads it too
                check_remote_code(path, ports.trust_remote_code)
                checkpoint = Checkpoint(path)
                checkpoint.open_all()
                checkpoint.close()
        except CheckpointError as e:
            raise pytest.UsageError(f"{given}: {e}") from None


def check_cloze_ports(tasks: list[str], ports: PortSettings) -> None:
    """Cloze scoring needs each continuation token's log-probability; a server lists the
    next token's top-K only."""
    cloze = [t for t in tasks if t.endswith("-cloze")]
    served = next((s for s in ports.specs() if s.served), None)
    if cloze and served:
        raise pytest.UsageError(f"--task {cloze[0]}: a served port ({served.given}) gives no "
                                "log-probability of each continuation token; cloze tasks run "
                                "on the engine, hf and plug-in ports (letter form: --task "
                                f"{cloze[0].removesuffix('-cloze')})")


def check_tp(models: list[str], tp: int) -> None:
    """Every model asked for by name must split over --tp ranks."""
    for model in models:
        try:
            check_world_size(get_config(model), tp)
        except SplitError as e:
            raise pytest.UsageError(f"--tp {tp}: {e}") from None


def reference_options(store: str | None, mode: str | None) -> dict:
    """--reference-store DIR and --reference-mode (auto with a store, else live)."""
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
    ports: PortSettings = field(default_factory=PortSettings)
    shard: tuple[int, int] | None = None  # (K, N): this host runs the K-th of N shards
    tp: int = 1  # tensor-parallel ranks
    quantize_lm_head: bool = False
    registered: dict[str, Path] = field(default_factory=dict)  # models read off --model-path
    reference_store: Path | None = None  # --reference-store
    reference_mode: str = "live"  # --reference-mode
    _resolved: dict[str, Path] = field(default_factory=dict)
    _layouts: dict[str, Weights] = field(default_factory=dict)

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
        settings = cls(
            models=given or list(EMBEDDED_MODELS), perf_models=given or list(REGISTRY),
            model_paths=paths, hardware=hardware, dtypes_given=dtypes, batches_given=batches,
            seqlens=seqlens or DEFAULT_SEQLENS,
            decode_steps=positive_int("--decode-steps", str(opt("--decode-steps"))),
            require_hardware=opt("--require-hardware"),
            cache_dir=writable_dir("--cache-dir", cache_dir),
            results_root=writable_dir("--results-dir", results),
            perf=PerfSettings.from_config(config, batches, seqlens,
                                          baselines_dir(opt("--baselines-dir"))),
            accuracy=AccuracySettings.from_config(config), shard=parse_shard(opt("--shard")),
            tp=tp, quantize_lm_head=opt("--quantize-lm-head"), ports=ports,
            registered={name: paths[name] / "config.json" for name in registered},
            **reference_options(opt("--reference-store"), opt("--reference-mode")))
        settings.check_lengths()
        check_cloze_ports(settings.accuracy.tasks, ports)
        check_port_directories(settings)
        ports.check_endpoints()
        return settings

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
        stored = (self.weights(model).scheme if spec.kind == "engine"
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

    def port_path(self, model: str) -> Path:
        """The HuggingFace directory an hf or plug-in port loads: --model-path, else the
        float checkpoint the embedded weights are built from."""
        if model in self.model_paths:
            return self.model_paths[model]
        return self.weights(model).source

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

    def check_lengths(self) -> None:
        """Every sequence the suites' grids will run fits its model's positions."""
        for models, tokens, what in (numerics_grid.length_requests(self)
                                     + perf_grid.length_requests(self)):
            for model in models:
                limit = get_config(model).max_positions
                if tokens > limit:
                    raise pytest.UsageError(f"{model} has {limit} positions; {what} = {tokens} "
                                            "tokens do not fit")

    def weights(self, model: str) -> Weights:
        """The model's weights and where its tokenizer and float source are (read once)."""
        if model not in self._layouts:
            self._layouts[model] = weights_layout(self.checkpoint(model))
        return self._layouts[model]

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

"""What a source document's main.py command line means: its suite, pytest options and files.

The line's flags and config.ini (read by `harness.cli.zoo_command`), the registered model its
directory holds, and each document's own grid and precision task (see `harness.cli.zoo`,
whose command this plans).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from harness.cli.zoo_command import (
    SeedCommand,
    ZooError,
    ini_int,
    ini_value,
    main_parser,
    read_config_ini,
)
from models import ported
from models.checkpoint import CheckpointError, check_not_modelslim, read_json

# Which document, grid and precision task each registered family comes from.
FAMILY = {"falcon": ("000", "falcon-seed", "mmlu"), "bloom": ("001", "bloom-seed", "ceval"),
          "llama": ("002", None, "ceval"), "qwen": ("003", "qwen-seed", "ceval"),
          "starcoder": ("004", "starcoder-seed", "humaneval")}


@dataclass
class Plan:
    suite: str
    model: str
    pytest_args: list[str]
    notes: list[str]
    perf_file: Path | None = None  # named by the command line or config.ini
    perf_default: Path | None = None  # else this, with the run id and .csv added
    multibatch_file: Path | None = None  # StarCoder's name for a run over several batches
    result_dir: Path | None = None  # test_result/ of a precision run
    world_size: int = 1
    bloom_style: bool = False  # the Bloom document's result_classes_acc.json too
    run_id: str = ""
    print_only: bool = False


def identify(path: Path, given: str | None) -> str:
    """The registered model a directory holds: --model, else the one whose structure its
    config has."""
    from harness.checkpoints import verify_checkpoint
    from models.config import REGISTRY

    if given:
        if given not in REGISTRY:
            raise ZooError(f"--model {given!r} is unknown; valid: {', '.join(REGISTRY)}")
        return given
    for name in REGISTRY:
        try:
            verify_checkpoint(name, path)
            return name
        except (CheckpointError, ValueError, KeyError):
            continue
    raise ZooError(f"{path}: no registered model has this structure; give --model NAME "
                   "(llmgate models lists them)")


def _config_of(path: Path) -> dict:
    """config.json of the directory, or of its first rank's where it is split."""
    parts = ported.part_dirs(path)
    return read_json((parts[0] if parts else path) / "config.json")


def plan(command: SeedCommand, cwd: Path, backend_usable=None) -> Plan:
    """What a main.py command line means: the suite, its pytest options, the files to write."""
    from models.config import get_config

    args = main_parser().parse_args(command.args)
    ini = read_config_ini(cwd)
    path = _model_dir(args, ini, cwd)
    model = identify(path, args.llmgate_model)
    family = get_config(model).family
    document, grid, precision_task = FAMILY[family]
    world = _world_size(args, ini, command)
    suite = _suite(args)
    notes = []
    int8 = _is_int8(args, family, notes)
    port_args = _port_args(path, model, int8, notes)
    backend, dtype = _backend_and_dtype(args, int8, backend_usable, notes)
    pytest_args = [f"suites/{suite}", "--model", model, "--model-path", f"{model}={path}",
                   "--hardware", backend, "--dtype", dtype, *port_args]
    if world > 1:
        pytest_args += ["--tp", str(world)]
    if args.hardware:
        notes.append(f"--hardware {args.hardware}: the Ascend chip ({args.hardware}P/B); "
                     "recorded, and --backend picks where to run")

    result = Plan(suite, model, pytest_args, notes, world_size=world,
                  print_only=args.print_only)
    if suite == "perf":
        _perf(args, ini, command, model, grid, cwd, result)
    elif suite == "accuracy":
        _precision(args, ini, precision_task, cwd, document, result)
    else:
        result.pytest_args += ["--batch", str(args.batch or 1)]
    for name in ("TIMEIT", "RETURN_PERF_DETAIL"):
        if name in command.env:
            notes.append(f"{name}={command.env[name]}: llmgate times every phase always")
    return result


def _model_dir(args, ini, cwd: Path) -> Path:
    """The model directory: --model_path, else config.ini's [model] model_path, from `cwd`;
    an msModelSlim directory is refused."""
    model_path = args.model_path or ini_value(ini, "model", "model_path")
    if not model_path:
        raise ZooError("main.py: no --model_path, and no [model] model_path in "
                       f"{cwd / 'config.ini'}")
    path = (cwd / Path(model_path).expanduser()).resolve()
    if not path.is_dir():
        raise ZooError(f"--model_path {model_path}: directory not found")
    try:
        check_not_modelslim(path)
    except CheckpointError as e:
        raise ZooError(str(e)) from None
    return path


def _world_size(args, ini, command: SeedCommand) -> int:
    """Processes to run: one per device of --device (else config.ini's [model] device_ids),
    else torchrun's --nproc_per_node, else one."""
    devices = args.device
    if devices is None and (ids := ini_value(ini, "model", "device_ids")):
        if not re.fullmatch(r"[0-9]+([,\s]+[0-9]+)*", ids):
            raise ZooError(f"config.ini: [model] device_ids {ids!r}: expected device numbers "
                           "separated by commas")
        devices = [int(d) for d in re.split(r"[,\s]+", ids)]
    if command.nproc and devices and command.nproc != len(devices):
        raise ZooError(f"torchrun --nproc_per_node {command.nproc} with --device "
                       f"{' '.join(map(str, devices))}: expected one process per device")
    return len(devices) if devices else (command.nproc or 1)


def _suite(args) -> str:
    """The suite --task or --mode names (performance by default)."""
    if args.task and args.mode:
        raise ZooError("main.py: --mode (Falcon, Bloom) and --task (Alpaca, Qwen) both given; "
                       "each document uses one")
    return {"performance": "perf", "precision": "accuracy", "inference": "numerics"}[
        args.task or args.mode or "performance"]


def _is_int8(args, family: str, notes: list[str]) -> bool:
    """Whether the line asks for int8 weights (--data_dtype, --is_quant; Bloom's default)."""
    unsaid = args.data_dtype is None and args.is_quant is None
    if family == "bloom" and unsaid:
        notes.append("--data_dtype defaults to int8 in the Bloom document")
    return args.data_dtype == "int8" or args.is_quant == 1 or (unsaid and family == "bloom")


def _port_args(path: Path, model: str, int8: bool, notes: list[str]) -> list[str]:
    """The --port options: transformers for a float checkpoint it (or the directory's remote
    code) can build; none, the engine, otherwise."""
    try:
        config = _config_of(path)
    except CheckpointError as e:
        raise ZooError(str(e)) from None
    if ported.is_ported(config) or int8:
        return []
    if "auto_map" not in config and not _transformers_knows(config):
        notes.append(f"transformers has no {config.get('model_type')!r} model and the "
                     "directory no remote code (auto_map): the engine runs it")
        return []
    return ["--port", f"{model}=hf"] + (["--trust-remote-code"] if "auto_map" in config else [])


def _backend_and_dtype(args, int8: bool, backend_usable, notes: list[str]) -> tuple[str, str]:
    """(backend, dtype): --backend, else the first usable of npu and cuda, else the CPU; w8a8
    for int8, else fp16 (fp32 on the CPU)."""
    backend = args.backend or _default_backend(backend_usable)
    if backend != "cpu":
        return backend, "w8a8" if int8 else "fp16"
    dtype = "w8a8" if int8 else "fp32"  # fp16 is the NPU's; the CPU runs float32
    notes.append(f"no NPU here: run on the CPU in {dtype} (--backend npu on an Ascend machine)")
    return backend, dtype




def _transformers_knows(config: dict) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return config.get("model_type") in CONFIG_MAPPING_NAMES


def _default_backend(usable) -> str:
    from harness.devices import get_backend

    usable = usable or (lambda name: get_backend(name).available)
    return next((name for name in ("npu", "cuda") if usable(name)), "cpu")


def _perf(args, ini, command, model, grid, cwd, result: Plan) -> None:
    from harness.perf.options import length_pairs
    from models.config import get_config

    size = ini_int(ini, "performance", "batch_size")
    batches = [args.batch] if args.batch else [size] if size else None
    given, preset = batches, False
    try:
        pairs = length_pairs(args.seqlen_in_pair or [], args.seqlen_out_pair or [],
                             args.seqlen_in_range, args.seqlen_out_range, spelling="_")
    except ValueError as e:
        raise ZooError(f"main.py: {e}") from None
    if pairs and args.seqlen_in_pair and not args.set_case_pair:
        result.notes.append("--seqlen_in_pair without --set_case_pair: the pairs are used")
    if not pairs:
        pairs, batches, preset = _unflagged_pairs(ini, grid, cwd, batches, result)
    limit = get_config(model).max_positions
    if "MAX_SEQ_LEN" in command.env:
        if not command.env["MAX_SEQ_LEN"].isdigit():
            raise ZooError(f"MAX_SEQ_LEN={command.env['MAX_SEQ_LEN']!r}: expected a number of "
                           "tokens")
        limit = min(limit, int(command.env["MAX_SEQ_LEN"]))
    fitting = [(i, o) for i, o in pairs if i + o <= limit]
    if len(fitting) < len(pairs):
        result.notes.append(f"{len(pairs) - len(fitting)} of {len(pairs)} length pairs do not "
                            f"fit in {limit} positions ({model}'s or MAX_SEQ_LEN's): left out")
    if not fitting:
        raise ZooError(f"no length pair fits in {limit} positions")
    if preset and len(fitting) == len(pairs):  # the native form of the same grid
        result.pytest_args += ["--grid", grid] + (["--batch", ",".join(map(str, given))]
                                                  if given else [])
    else:
        result.pytest_args += ["--batch", ",".join(map(str, batches or [1])),
                               "--seqlen-in-pair", *(str(i) for i, _ in fitting),
                               "--seqlen-out-pair", *(str(o) for _, o in fitting)]
    name = args.performance_output_file or ini_value(ini, "performance", "save_file_name")
    model_name = ini_value(ini, "performance", "model_name") or model
    result.perf_file = cwd / Path(name).expanduser() if name else None
    result.perf_default = cwd / f"performance_test_npu_{model_name}"  # + _<run id>.csv
    if len(batches or [1]) > 1:
        device = (args.device or [0])[0]
        result.multibatch_file = cwd / f"multibatch_performance_{model_name}_{device}.csv"


def _unflagged_pairs(ini, grid: str | None, cwd: Path, batches: list[int] | None,
                     result: Plan) -> tuple[list[tuple[int, int]], list[int] | None, bool]:
    """(pairs, batches, whether they are the document's preset grid) where main.py was given
    no lengths: config.ini's, else the document's grid, else llmgate's defaults."""
    if case_pair := ini_value(ini, "performance", "case_pair"):
        try:
            return [(int(i), int(o)) for i, o in json.loads(case_pair)], batches, False
        except (ValueError, TypeError):
            raise ZooError(f"{cwd / 'config.ini'}: [performance] case_pair {case_pair!r}: "
                           "expected [[in, out], ...]") from None
    low, high = ini_int(ini, "performance", "min_len_exp"), ini_int(ini, "performance",
                                                                       "max_len_exp")
    if low is not None and high is not None:
        return [(2**e, 2**e) for e in range(low, high + 1)], batches, False
    if grid:
        from harness.perf.options import SEED_GRIDS

        result.notes.append(f"no lengths given: the document's grid (--grid {grid})")
        return SEED_GRIDS[grid][1], batches or SEED_GRIDS[grid][0], True
    result.notes.append("the Alpaca document states no grid: llmgate's default lengths")
    return [(32, 32), (128, 32)], batches, False


def _precision(args, ini, task, cwd, document, result: Plan) -> None:
    task = ini_value(ini, "precision", "mode") or task
    if task not in ("ceval", "mmlu", "humaneval"):
        raise ZooError(f"{cwd / 'config.ini'}: [precision] mode {task!r}: expected ceval, mmlu "
                       "or humaneval")
    work = args.dataset_path or ini_value(ini, "precision", "work_dir")
    result.pytest_args += ["--task", task, "--questions-per-subject", "0"]
    if task == "humaneval":
        result.pytest_args += ["--humaneval-problems", "0"]
    if work:
        root = (cwd / Path(work).expanduser()).resolve()
        if not root.is_dir():
            raise ZooError(f"--dataset_path {work}: directory not found")
        if task != "humaneval":
            result.pytest_args += [f"--{task}-path", str(root)]
        result.result_dir = root / "test_result"
    else:
        result.result_dir = cwd / "test_result"
        result.notes.append(f"no --dataset_path: {task} from llmgate's default data")
    if shot := ini_value(ini, "precision", "shot"):
        result.pytest_args += ["--shots", shot]
    if batch := args.batch or ini_value(ini, "precision", "batch"):
        result.pytest_args += ["--batch", str(batch)]
    result.bloom_style = document == "001"

"""`llmgate zoo`: the source documents' command lines, pasted as they are written.

    llmgate zoo python3 main.py --model_path DIR --device 0 --mode precision --dataset-path ./
    llmgate zoo torchrun --nproc_per_node 2 --master_port 39682 main.py --model_path DIR \\
        --device 0 1 --data_dtype fp16 --hardware 310
    llmgate zoo RETURN_PERF_DETAIL=1 python main.py --task performance    # reads ./config.ini
    llmgate zoo python3 handle_weights.py --input-path IN --output-path OUT --handle-type quant

Each line runs the matching suite on the model directory (perf for `--mode performance` /
`--task performance`, accuracy for precision, numerics for `--task inference`), prints the
equivalent `pytest` command, and writes the documents' own files beside llmgate's run:
the perf CSV (`--performance_output_file`, else `performance_test_npu_<model_name>_<run>.csv`;
over several batches also StarCoder's `multibatch_performance_<model_name>_<device>.csv`)
and the precision files under `test_result/` (`cache0.csv`, `result_0_classes_acc.json`,
`result_0_subject_acc.json`, `device0.log`, and Bloom's `result_classes_acc.json`; one copy
per rank on a multi-device run, as the Qwen document shows).

Where the documents leave something to their `config.ini` (Alpaca, Qwen: atb_speed_sdk's
[model] model_path and device_ids, [precision] mode, work_dir, shot and batch, [performance]
model_name, batch_size, min_len_exp, max_len_exp and case_pair), it is read from
./config.ini. Where they disagree, each document is followed for its own model:
`--seqlen_in_range 5 6` is the closed interval 2^5..2^6 (the Bloom document), StarCoder's
`[5,11]` the half-open 2^5..2^10; pairs are zipped (StarCoder: 4 pairs, 4 cases). A perf run
with no lengths given takes the model's document grid (`--grid <family>-seed`), less the
cases its positions (or MAX_SEQ_LEN) cannot hold. After `--`, arguments go to pytest as
they are (e.g. `-- --questions-per-subject 2`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from harness.cli.zoo_command import SeedCommand, SeedParser, ZooError
from harness.cli.zoo_plan import Plan, plan

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = re.compile(r"(python[0-9.]*|torchrun)$")
ENV = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
TORCHRUN_SWITCHES = {"--standalone", "--no-python", "--no_python", "--run-path", "--run_path",
                     "--module", "-m"}  # torchrun options that take no value


def parse_command(tokens: list[str]) -> SeedCommand:
    """Split `VAR=value ... [python3 | torchrun OPTIONS] main.py FLAGS [-- PYTEST ARGS]`."""
    tokens = list(tokens)
    if not tokens:
        raise ZooError("expected a source document's command line, e.g. `llmgate zoo python3 "
                       "main.py --model_path DIR --device 0` (llmgate zoo --help)")
    command = SeedCommand()
    if "--" in tokens:
        cut = tokens.index("--")
        tokens, command.pytest_args = tokens[:cut], tokens[cut + 1:]
    while tokens and (match := ENV.match(tokens[0])):
        command.env[match.group(1)] = match.group(2)
        tokens.pop(0)
    if tokens and Path(tokens[0]).name in ("bash", "sh") or tokens and tokens[0].endswith(".sh"):
        script = next((t for t in tokens if t.endswith(".sh")), tokens[0])
        raise ZooError(f"{Path(script).name}: a shell wrapper llmgate zoo does not read; paste "
                       "the main.py line it runs (e.g. `python main.py --task precision`, with "
                       "--device 0 1 for two chips)")
    if tokens and LAUNCHERS.match(Path(tokens[0]).name):
        launcher = Path(tokens.pop(0)).name
        while tokens and tokens[0].startswith("-"):
            option = tokens.pop(0)
            name, _, value = option.partition("=")
            if not value and name not in TORCHRUN_SWITCHES and tokens and \
                    not tokens[0].startswith("-") and not tokens[0].endswith(".py"):
                value = tokens.pop(0)
            if launcher != "torchrun":
                raise ZooError(f"{launcher} {option}: only a script follows python here")
            key = name.lstrip("-").replace("-", "_")
            if key == "nproc_per_node":
                if not value.isdigit() or int(value) < 1:
                    raise ZooError(f"torchrun {name} {value!r}: expected a number of "
                                   "processes >= 1")
                command.nproc = int(value)
            elif key == "nnodes" and value not in ("1", "1:1"):
                raise ZooError(f"torchrun {name} {value}: llmgate runs its ranks on one node")
    if tokens and tokens[0].endswith(".py"):
        command.script = Path(tokens.pop(0)).name
    if command.script not in ("main.py", "handle_weights.py"):
        raise ZooError(f"{command.script}: expected main.py or handle_weights.py, the source "
                       "documents' scripts")
    command.args = tokens
    return command


def pytest_command(plan_: Plan, extra: list[str]) -> list[str]:
    return [*plan_.pytest_args, "--run-id", plan_.run_id, *extra]


def write_seed_files(plan_: Plan, run_dir: Path, log: str) -> list[Path]:
    """The documents' files from a finished run's own."""
    written = []
    if plan_.perf_default is not None:
        sources = sorted(run_dir.glob("performance_*.csv"))
        if sources:
            targets = [plan_.perf_file or plan_.perf_default.with_name(
                f"{plan_.perf_default.name}_{plan_.run_id}.csv")]
            if plan_.multibatch_file is not None:
                targets.append(plan_.multibatch_file)
            for target in targets:
                target.parent.mkdir(parents=True, exist_ok=True)
                if len(sources) == 1:
                    shutil.copyfile(sources[0], target)
                else:  # one file of every hardware x dtype the run measured
                    import pandas as pd

                    pd.concat([pd.read_csv(s) for s in sources]).to_csv(target, index=False)
                written.append(target)
    if plan_.result_dir is not None:
        cases = sorted(p.parent for p in run_dir.glob("accuracy/*/result_0_classes_acc.json"))
        if cases:
            out = plan_.result_dir
            out.mkdir(parents=True, exist_ok=True)
            for rank in range(plan_.world_size):  # each rank's copy, as the documents show
                for name in ("cache0.csv", "result_0_classes_acc.json",
                             "result_0_subject_acc.json"):
                    target = out / name.replace("0", str(rank), 1)
                    shutil.copyfile(cases[0] / name, target)
                    written.append(target)
                (out / f"device{rank}.log").write_text(log)
                written.append(out / f"device{rank}.log")
            if plan_.bloom_style:
                shutil.copyfile(cases[0] / "result_0_classes_acc.json",
                                out / "result_classes_acc.json")
                written.append(out / "result_classes_acc.json")
    return written


def main(argv: list[str], cwd: Path | None = None) -> int:
    cwd = Path(cwd or os.getcwd())
    try:
        command = parse_command(argv)
        if command.script == "handle_weights.py":
            return _handle_weights(command, cwd)
        result = plan(command, cwd)
    except ZooError as e:
        print(f"llmgate zoo: {e}", file=sys.stderr)
        return 2
    from harness.results import new_run_id, results_root

    result.run_id = f"zoo-{new_run_id()}"
    extra, results = _absolute_results_dir(command.pytest_args, cwd)
    argv_ = pytest_command(result, extra)
    for note in result.notes:
        print(f"note: {note}")
    env_prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in command.env.items())
    print(f"equivalent, from {ROOT}: {env_prefix + ' ' if env_prefix else ''}pytest "
          f"{shlex.join(argv_)}", flush=True)
    if result.print_only:
        return 0
    env = {**os.environ, **command.env, "LLMGATE_ZOO_COMMAND": shlex.join(argv)}
    # pytest's output as it comes (a run may last hours), kept for the documents' device logs
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                                *argv_], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    log = []
    for line in process.stdout:
        sys.stdout.write(line)
        log.append(line)
    code = process.wait()
    written = write_seed_files(result, results_root(results, ROOT) / result.run_id, "".join(log))
    for path in written:
        print(f"wrote {path}")
    if not written and code == 0 and (result.perf_default or result.result_dir):
        print("llmgate zoo: the run measured nothing the documents' files could hold",
              file=sys.stderr)
        return 1
    return code


def _handle_weights(command: SeedCommand, cwd: Path) -> int:
    """handle_weights.py's line as `llmgate weights` with the same flags, paths from cwd."""
    import harness.cli.weights as weights

    parser = SeedParser(prog="handle_weights.py", add_help=False)
    sub = parser.add_subparsers(dest="command")
    weights.add_parser(sub)
    try:
        args = parser.parse_args(["weights", *command.args])
    except SystemExit:  # a subparser's own error, printed already
        return 2
    for name in ("input_path", "output_path"):
        if getattr(args, name) is not None:
            setattr(args, name, cwd / getattr(args, name).expanduser())
    print(f"equivalent: llmgate weights {shlex.join(command.args)}")
    return weights.main(args)


def _absolute_results_dir(extra: list[str], cwd: Path) -> tuple[list[str], str | None]:
    """pytest's arguments with a relative --results-dir made absolute from `cwd` (pytest runs
    in the project); and that directory, if given."""
    extra, found = list(extra), None
    for i, arg in enumerate(extra):
        if arg.startswith("--results-dir="):
            found = str(cwd / Path(arg.split("=", 1)[1]).expanduser())
            extra[i] = f"--results-dir={found}"
        elif arg == "--results-dir" and i + 1 < len(extra):
            found = extra[i + 1] = str(cwd / Path(extra[i + 1]).expanduser())
    return extra, found

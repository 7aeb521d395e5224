"""The `llmgate` command.

    llmgate run [SUITE] [PYTEST ARGS]   run the suites (default: all) on the embedded defaults
    llmgate report RUN_DIR              re-render a run's report from its records
    llmgate merge OUT RUN_DIR...        join shard runs into one run and report
    llmgate compare RUN_A RUN_B         what changed from run B to run A
    llmgate history [--case ID]         key metrics over the stored runs
    llmgate baseline save|list|show     store a run as a baseline; list and show baselines
    llmgate weights quant|cut           quantize a checkpoint (int8) or split it per rank
    llmgate zoo python3 main.py ...     a source document's command line, as written
    llmgate prepare                     build or verify the embedded checkpoints and datasets
    llmgate models                      list the registered models and their weights
    llmgate devices                     say which hardware is usable here, and why not
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.cli import baseline as baseline_commands
from harness.cli import machine as machine_commands
from harness.cli import runs as run_commands
from harness.cli import weights as weights_commands
from harness.cli import zoo as zoo_commands
from harness.results import results_root

ROOT = Path(__file__).resolve().parents[2]
SUITES = ("numerics", "accuracy", "perf")


def cmd_run(args: argparse.Namespace, pytest_args: list[str]) -> int:
    """The suites through pytest, as one run: the perf suite afterwards and alone, in this
    process, because workers running beside it would be timed with it."""
    import pytest

    from harness.results import new_run_id

    suites = SUITES if not args.suite or "all" in args.suite else args.suite
    known, _ = _RUN_OPTIONS.parse_known_args(pytest_args)
    run_id = known.run_id or new_run_id()
    extra = [] if known.run_id else ["--run-id", run_id]
    codes = []
    parallel = [str(ROOT / "suites" / s) for s in suites if s != "perf"]
    if parallel:
        argv = [*parallel, *pytest_args, *extra]
        workers = args.workers
        if workers is None:
            workers, code = _workers_for(argv)
            if code is not None:
                return code
        if workers > 1:
            argv += ["-n", str(workers), "--dist", "loadgroup"]
        codes.append(int(pytest.main(["-q", *argv])))
        if codes[-1] in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERRUPTED):
            return codes[-1]
    if "perf" in suites:
        results = results_root(known.results_dir, ROOT) / run_id
        started = results.is_dir() and any(results.iterdir())  # by the suites before it
        resume = ["--resume"] if started and not known.resume else []
        codes.append(int(pytest.main(["-q", str(ROOT / "suites" / "perf"), *pytest_args, *extra,
                                      *resume])))
    measured = [c for c in codes if c != pytest.ExitCode.NO_TESTS_COLLECTED]
    report = results_root(known.results_dir, ROOT) / run_id / "index.html"
    if report.exists():
        print(f"\nllmgate report: {report}")
    return max(measured) if measured else codes[0]


# The pytest options `llmgate run` itself needs to read (they still go to pytest).
_RUN_OPTIONS = argparse.ArgumentParser(add_help=False)
_RUN_OPTIONS.add_argument("--run-id")
_RUN_OPTIONS.add_argument("--results-dir")
_RUN_OPTIONS.add_argument("--resume", action="store_true")


def _workers_for(argv: list[str]) -> tuple[int, int | None]:
    """Workers for a selection: one per model, at most one per core; a single process when
    that is one (starting xdist workers costs more than it saves on a few cases).

    Collects in this process first, its output discarded (not with `-p no:terminal`: the
    terminal plugin owns -v, -q, -r and --tb, which must pass through); a usage error, which
    pytest prints on stderr, ends the run there."""
    import contextlib
    import io
    import os

    import pytest

    class Collector:
        items: list = []

        def pytest_collection_finish(self, session):
            Collector.items = list(session.items)

    with contextlib.redirect_stdout(io.StringIO()):
        code = pytest.main(["--collect-only", *argv], plugins=[Collector()])
    if code == pytest.ExitCode.USAGE_ERROR:
        return 1, int(code)
    models = {getattr(item, "callspec", None) and item.callspec.params.get("case")
              for item in Collector.items}
    models = {case.model for case in models if case}
    return max(1, min(os.cpu_count() or 1, len(models))), None


def _at_least_one(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, not {value!r}")
    return int(value)


def _fraction(value: str) -> float:
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not 0 <= fraction < 10:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a fraction >= 0, e.g. 0.10, not {value!r}")
    return fraction


def build_parser() -> argparse.ArgumentParser:
    """`llmgate`'s commands and their options (`zoo` reads its own: a seed command line)."""
    parser = argparse.ArgumentParser(prog="llmgate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    _add_stored_run_parsers(sub)
    machine_commands.add_parsers(sub)
    baseline_commands.add_parser(sub)
    weights_commands.add_parser(sub)
    sub.add_parser("zoo", help="run a source document's main.py or handle_weights.py command "
                               "line as written",
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   usage="llmgate zoo [VAR=value ...] [python3 | torchrun OPTIONS] "
                         "main.py|handle_weights.py FLAGS [-- PYTEST ARGS]",
                   description=zoo_commands.__doc__)
    return parser


def _add_run_parser(sub) -> None:
    """`llmgate run`: its own option; the rest goes to pytest."""
    run = sub.add_parser(
        "run", help="run the suites through pytest; other arguments go to pytest",
        usage="llmgate run [SUITE ...] [--workers N] [PYTEST ARGS ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run llmgate's suites through pytest, as one run (one --run-id, one "
                    "report). Every argument\nnot listed here goes to pytest unchanged; the "
                    "llmgate options (--model, --dtype, --batch, ...)\nare listed under "
                    "'llmgate' in `pytest --help`. The perf suite runs last and alone, in this\n"
                    "process, so that no worker beside it skews its timings.",
        epilog="examples:\n"
               "  llmgate run                                  every suite, embedded defaults\n"
               "  llmgate run perf -k \"qwen and bs8\"           the batch-8 Qwen perf cases\n"
               "  llmgate run numerics -k \"qwen and bs1-\"      one suite, a -k selection\n"
               "  llmgate run numerics --model smollm2-135m --dtype fp32 --workers 1\n\n"
               f"SUITE (first, before other arguments): {', '.join(SUITES)} or all "
               "(default: all)")
    run.add_argument("--workers", type=_at_least_one, metavar="N",
                     help="pytest-xdist worker processes (default: one per model selected, "
                          "at most one per core; 1 runs in this process)")


def _add_stored_run_parsers(sub) -> None:
    """The commands over stored runs: report, merge, compare and history."""
    report = sub.add_parser("report", help="re-render a run's report from its records",
                            epilog="example: llmgate report reports/latest")
    report.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    merge = sub.add_parser(
        "merge", help="join runs (shards of one grid, or runs of several machines) into one",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  host A: llmgate run --shard 1/2 --run-id a\n"
               "  host B: llmgate run --shard 2/2 --run-id b\n"
               "  llmgate merge reports/release reports/a reports/b")
    merge.add_argument("out", metavar="OUT", type=Path, help="the merged run's directory")
    merge.add_argument("run_dirs", metavar="RUN_DIR", type=Path, nargs="+")
    merge.add_argument("--force", action="store_true",
                       help="merge runs of different task, prompt or threshold versions, and "
                            "replace a non-empty OUT")
    compare = sub.add_parser(
        "compare", help="what changed from run B to run A: perf per cell beyond noise, "
                        "accuracy with the paired test and the flipped questions, numerics drift",
        epilog="example: llmgate compare reports/today reports/last-release")
    compare.add_argument("run_a", metavar="RUN_A", type=Path)
    compare.add_argument("run_b", metavar="RUN_B", type=Path, help="the baseline")
    compare.add_argument("--tolerance", type=_fraction, default=0.10,
                         help="perf: smaller changes are not reported (default: 0.10)")
    history = sub.add_parser("history", help="key metrics over the stored runs, and the run "
                                             "where each regressed",
                             epilog="example: llmgate history --case "
                                    "qwen-tiny-cpu-fp32-bs8-in32-out32")
    history.add_argument("--case", metavar="ID", help="one case id (default: all)")
    history.add_argument("--results-dir", default=str(results_root(None, ROOT)),
                         help="default: the project's reports/")
    history.add_argument("--last", type=_at_least_one, default=8, metavar="N",
                         help="values shown per metric (default: 8)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["zoo"] and argv[1:2] not in (["-h"], ["--help"]):
        return zoo_commands.main(argv[1:])  # a seed command line, its flags as they are
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "run":
        args.suite = []
        while rest and rest[0] in (*SUITES, "all"):
            args.suite.append(rest.pop(0))
        return cmd_run(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    commands = {"prepare": machine_commands.cmd_prepare, "models": machine_commands.cmd_models,
                "devices": machine_commands.cmd_devices,
                "baseline": baseline_commands.main, "weights": weights_commands.main,
                "report": run_commands.cmd_report,
                "merge": run_commands.cmd_merge, "compare": run_commands.cmd_compare,
                "history": run_commands.cmd_history}
    try:
        code = commands[args.command](args)
        sys.stdout.flush()  # a reader gone early (`| head`) shows here if the output was short
        return code
    except run_commands.RunError as e:
        print(f"llmgate {args.command}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader has what it wanted: no traceback, and none either when Python flushes
        # stdout again at exit (the documented way: stdout to /dev/null).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())

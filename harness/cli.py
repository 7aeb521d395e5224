"""The `llmgate` command.

    llmgate run [PYTEST ARGS]   run the suites (default: numerics) on the embedded defaults
    llmgate prepare             build or verify the embedded checkpoints
    llmgate models              list the registered models
    llmgate devices             say which hardware is usable here, and why not
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabulate import tabulate

from models.config import EMBEDDED_MODELS, REGISTRY

ROOT = Path(__file__).resolve().parent.parent
SUITES = ("numerics",)


def cmd_run(args: argparse.Namespace, pytest_args: list[str]) -> int:
    import pytest

    suites = [str(ROOT / "suites" / s) for s in (args.suite or SUITES)]
    workers = ["-n", str(args.workers)] if args.workers > 1 else []
    return int(pytest.main([*suites, "-q", *workers, *pytest_args]))


def cmd_prepare(args: argparse.Namespace) -> int:
    from harness.checkpoints import build_all

    paths = build_all(Path(args.cache_dir) if args.cache_dir else None)
    print(tabulate(sorted(paths.items()), headers=("model", "checkpoint")))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    rows = []
    for cfg in REGISTRY.values():
        rows.append((cfg.name, cfg.family, cfg.num_layers, cfg.hidden_size,
                     f"{cfg.num_heads}/{cfg.num_kv_heads}", cfg.vocab_size,
                     "tied" if cfg.tie_embeddings else "",
                     "embedded" if cfg.name in EMBEDDED_MODELS else "--model-path"))
    print(tabulate(rows, headers=("model", "family", "layers", "hidden", "heads/kv", "vocab",
                                  "embeddings", "weights")))
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from harness.devices import BACKENDS, get_backend

    rows = []
    for name in BACKENDS:
        backend = get_backend(name)
        ok, reason = backend.availability()
        rows.append((name, "yes" if ok else "no", ", ".join(backend.dtypes()) if ok else "",
                     reason))
    print(tabulate(rows, headers=("hardware", "usable", "dtypes", "reason")))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmgate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the suites; extra arguments go to pytest")
    run.add_argument("--suite", action="append", choices=SUITES,
                     help="suite to run, repeatable (default: all)")
    run.add_argument("--workers", type=int, default=2,
                     help="pytest-xdist worker processes (default: 2)")
    prepare = sub.add_parser("prepare", help="build or verify the embedded checkpoints")
    prepare.add_argument("--cache-dir", help="default: $LLMGATE_CACHE or ~/.cache/llmgate")
    sub.add_parser("models", help="list the registered models")
    sub.add_parser("devices", help="which hardware is usable here")
    args, rest = parser.parse_known_args(argv)
    if args.command != "run" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    commands = {"run": lambda: cmd_run(args, rest), "prepare": lambda: cmd_prepare(args),
                "models": lambda: cmd_models(args), "devices": lambda: cmd_devices(args)}
    return commands[args.command]()


if __name__ == "__main__":
    sys.exit(main())

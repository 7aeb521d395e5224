"""The perf suite's options: the source documents' grid flags, repeats, gate and max-batch.

Every flag is also accepted under the seeds' own spelling (`--seqlen_in_pair`), and lengths
take the seeds' space-separated form (`--seqlen_in_pair 256 512`) as well as commas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.perf.load import ServedLoad
from harness.perf.load_options import add_load_options, served_load
from harness.values import MAX_BATCH, check_names, int_list, positive_int, split_values
from models.config import REGISTRY

if TYPE_CHECKING:
    from harness.settings import Settings

DEFAULT_BATCHES = [1, 8]
DEFAULT_PAIRS = [(32, 32), (128, 32)]
DEFAULT_OUT = 32  # new tokens per --seqlen prompt length, when no perf pairs are given

_LENGTHS_5_10 = [2**e for e in range(5, 11)]
# The source documents' own default grids, (batch sizes, (in, out) pairs): a run on their
# weights with one of these meets every stored row of that document's tables. The Alpaca
# document states no grid (its one row has no lengths), so it has no preset.
SEED_GRIDS = {
    # 000 and 001: "测试结果为2^5~2^10数据平均值", batch 1; 001's range flags are closed
    # intervals (`--seqlen_in_range 5 6` is 32, 64), so this is `5 10` x `5 10`.
    "falcon-seed": ([1], [(i, o) for i in _LENGTHS_5_10 for o in _LENGTHS_5_10]),
    "bloom-seed": ([1], [(i, o) for i in _LENGTHS_5_10 for o in _LENGTHS_5_10]),
    # 003: its 910B3 and 310P3 tables, in = out 256..2048 at batches 1, 2, 4, 8.
    "qwen-seed": ([1, 2, 4, 8], [(n, n) for n in (256, 512, 1024, 2048)]),
    # 004: run.sh's multi_batch_size [1,4,8,16,32] over its 36 cases; its range [5,11]
    # excludes the end ("默认输入长度从2^5到2^10").
    "starcoder-seed": ([1, 4, 8, 16, 32], [(i, o) for i in _LENGTHS_5_10
                                           for o in _LENGTHS_5_10]),
}
MIN_MEMORY = 2**20  # below this --memory-limit is a number missing its unit
UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
         "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def add_options(group) -> None:
    def add(name: str, **kwargs):  # the seeds' spelling too, where it differs
        group.addoption(*dict.fromkeys((f"--{name}", f"--{name.replace('-', '_')}")), **kwargs)

    add("seqlen-in-pair", nargs="+", metavar="N",
        help="perf: prompt lengths, zipped with --seqlen-out-pair (default: --seqlen's "
             "lengths, each with 32 new tokens; without --seqlen, 32 128)")
    add("seqlen-out-pair", nargs="+", metavar="N",
        help="perf: new-token counts, one per --seqlen-in-pair value (default: 32 32)")
    add("seqlen-in-range", nargs=2, metavar=("START", "END"),
        help="perf: prompt lengths 2^START..2^END inclusive, every combination with "
             "--seqlen-out-range (e.g. 5 10: 32..1024)")
    add("seqlen-out-range", nargs=2, metavar=("START", "END"),
        help="perf: new-token counts 2^START..2^END inclusive")
    add("grid", metavar="NAME",
        help="perf: a source document's own default grid of batches and lengths: "
             "falcon-seed, bloom-seed (batch 1, 2^5..2^10 x 2^5..2^10), qwen-seed (batches "
             "1,2,4,8, in = out 256..2048), starcoder-seed (batches 1,4,8,16,32 over 2^5..2^10 "
             "x 2^5..2^10); --batch replaces its batches; --seqlen still sets the numerics "
             "suite's lengths (default: none)")
    add("repeats", type=int, default=5, metavar="N",
        help="perf: measured requests per case; every sample is kept (default: 5)")
    add("warmup", type=int, default=1, metavar="N",
        help="perf: unrecorded warm-up requests per case (default: 1)")
    add("compile", action="store_true", default=False,
        help="perf: run the ported decode step through torch.compile (default: eager)")
    add("perf-reference", action="store_true", default=False,
        help="perf: also time transformers on the CPU through the same loop and record "
             "ported/reference per phase (default: off)")
    add("perf-tolerance", type=float, default=0.10, metavar="F",
        help="perf: a metric fails when worse than a same-device baseline by more than this "
             "fraction, beyond noise (default: 0.10)")
    add("perf-min-ratio", type=float, metavar="R",
        help="perf: gate cross-device comparisons too: fail when our speed is below R x the "
             "baseline's (default: report the ratio only)")
    add("perf-baseline", action="append", metavar="NAME",
        help="perf: stored baselines to compare with, repeatable: a seed table's file stem, "
             "a name saved by `llmgate baseline save`, or none (default: every one that "
             "matches a case)")
    add("assume-unit", metavar="UNIT",
        help="perf: ms or tokens/s, the unit to read baseline rows whose unit is ambiguous in "
             "their source (default: such rows are not used)")
    add("concurrency", action="append", metavar="N",
        help="perf, served ports: concurrent streaming clients, each level its own case, "
             "repeatable or comma-separated (default: 1,4)")
    add("max-batch", action="store_true", default=False,
        help="perf: search the largest batch per (in, out) instead of the grid's batches")
    add("memory-limit", metavar="SIZE",
        help="perf: memory the max-batch search may use, e.g. 512MiB or 2GB (default: the "
             "device's free memory)")
    add("max-next-token-ms", type=float, metavar="MS",
        help="perf: max-batch search also keeps the next-token latency under this")
    add("max-batch-cap", type=int, default=1024, metavar="N",
        help="perf: largest batch the max-batch search probes (default: 1024)")
    add_load_options(group)


def parse_size(option: str, text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS or float(match.group(1)) <= 0:
        raise pytest.UsageError(f"{option} {text!r}: expected a size like 512MiB, 2GB or "
                                "1073741824")
    size = int(float(match.group(1)) * UNITS[match.group(2).lower()])
    if size < MIN_MEMORY:
        raise pytest.UsageError(f"{option} {text!r}: {size} bytes cannot hold a model; give a "
                                f"unit, e.g. {match.group(1)}MiB")
    return size


def _lengths(option: str, values: list[str] | None) -> list[int]:
    return [positive_int(option, v) for v in split_values(values, option)]


def length_pairs(in_pair: list[int], out_pair: list[int], in_range: list[int] | None,
                 out_range: list[int] | None, spelling: str = "-") -> list[tuple[int, int]]:
    """The (input, output) length pairs the seeds' flags give: the pairs zipped, or every
    combination of two closed ranges of powers of two; [] where neither is given. A
    ValueError names the flags as spelled (`spelling` "_": main.py's own)."""
    def flag(name: str) -> str:
        return "--seqlen" + spelling + name.replace("-", spelling)

    if len(in_pair) != len(out_pair):
        raise ValueError(f"{flag('in-pair')} has {len(in_pair)} values and {flag('out-pair')} "
                         f"{len(out_pair)}: expected one output length per input length")
    if bool(in_range) != bool(out_range):
        raise ValueError(f"{flag('in-range')} and {flag('out-range')} go together")
    if in_pair and in_range:
        raise ValueError(f"give either {flag('in-pair')}/{flag('out-pair')} or "
                         f"{flag('in-range')}/{flag('out-range')}, not both")
    if not in_range:
        return list(zip(in_pair, out_pair))
    powers = []
    for name, (start, end) in (("in-range", in_range), ("out-range", out_range)):
        if not 0 <= start <= end <= 20:
            raise ValueError(f"{flag(name)} {start} {end}: expected START <= END within 0..20 "
                             "(powers of two)")
        powers.append([2**e for e in range(start, end + 1)])
    return [(i, o) for i in powers[0] for o in powers[1]]


@dataclass(frozen=True)
class PerfSettings:
    batches: list[int]
    pairs: list[tuple[int, int]]
    repeats: int
    warmup: int
    compile: bool
    reference: bool
    tolerance: float
    min_ratio: float | None
    baselines: list[str] | None  # None: every matching baseline; []: none
    assume_unit: str | None
    max_batch: bool
    memory_limit: int | None
    max_next_token_ms: float | None
    max_batch_cap: int
    baselines_dir: Path
    concurrency: tuple[int, ...] = (1, 4)
    models: list[str] = field(default_factory=list)  # --model's, else every registered one
    served_load: ServedLoad = field(default_factory=ServedLoad)  # served ports under load
    concurrency_given: tuple[int, ...] = ()  # --concurrency as given (a rate case's cap)

    def baseline_names(self) -> tuple[str, ...] | None:
        return None if self.baselines is None else tuple(self.baselines)

    @classmethod
    def from_config(cls, config: pytest.Config, core: Settings) -> PerfSettings:
        """From the perf options and the run-wide core (its --batch, models, baselines)."""
        opt = config.getoption
        batches, pairs = _grid(opt, core.batches_given, int_list("--seqlen", opt("--seqlen"), []))
        tolerance, min_ratio = opt("--perf-tolerance"), opt("--perf-min-ratio")
        if not 0 <= tolerance < 10:
            raise pytest.UsageError(f"--perf-tolerance {tolerance}: expected a fraction >= 0, "
                                    "e.g. 0.10")
        if min_ratio is not None and min_ratio <= 0:
            raise pytest.UsageError(f"--perf-min-ratio {min_ratio}: expected a ratio > 0")
        names = split_values(opt("--perf-baseline"), "--perf-baseline")
        _check_baselines(names, core.baselines_dir)
        if opt("--assume-unit") is not None:
            check_names("--assume-unit", [opt("--assume-unit")], ("ms", "tokens/s"))
        return cls(
            batches=batches or DEFAULT_BATCHES, pairs=list(dict.fromkeys(pairs)),
            repeats=positive_int("--repeats", str(opt("--repeats"))),
            warmup=positive_int("--warmup", str(opt("--warmup")), minimum=0),
            compile=opt("--compile"), reference=opt("--perf-reference"), tolerance=tolerance,
            min_ratio=min_ratio, baselines=None if not names else
            [] if names == ["none"] else names, assume_unit=opt("--assume-unit"),
            **_max_batch(opt), baselines_dir=core.baselines_dir,
            models=core.models_given or list(REGISTRY),
            concurrency=tuple(int_list("--concurrency", opt("--concurrency"), [1, 4],
                                       maximum=256)), served_load=served_load(opt),
            concurrency_given=tuple(int_list("--concurrency", opt("--concurrency"), [],
                                             maximum=256)))


def _grid(opt, batches: list[int], seqlens: list[int]) -> tuple[list[int], list]:
    """The batches and (in, out) pairs: --grid's, the length flags', else --seqlen's."""
    ranges = [[positive_int(name, v, minimum=0) for v in opt(name)] if opt(name) else None
              for name in ("--seqlen-in-range", "--seqlen-out-range")]
    try:
        given = length_pairs(_lengths("--seqlen-in-pair", opt("--seqlen-in-pair")),
                             _lengths("--seqlen-out-pair", opt("--seqlen-out-pair")), *ranges)
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    grid = opt("--grid")
    if grid is None:
        return batches, given or [(s, DEFAULT_OUT) for s in seqlens] or DEFAULT_PAIRS
    check_names("--grid", [grid], SEED_GRIDS)
    if given:
        raise pytest.UsageError(f"--grid {grid} gives the lengths; leave out the "
                                "--seqlen-*-pair and --seqlen-*-range flags")
    return batches or SEED_GRIDS[grid][0], SEED_GRIDS[grid][1]


def _check_baselines(names: list[str], baselines_dir: Path) -> None:
    if not names or names == ["none"]:
        return
    from harness.baselines import ours_baselines, perf_tables

    known = {r.name for r in perf_tables(baselines_dir)} | set(ours_baselines(baselines_dir))
    for name in names:
        if name not in known:
            raise pytest.UsageError(f"--perf-baseline {name!r} is unknown; stored in "
                                    f"{baselines_dir}: {', '.join(sorted(known))}")


def _max_batch(opt) -> dict:
    """The max-batch search's fields; its limits without --max-batch are refused."""
    memory, next_ms = opt("--memory-limit"), opt("--max-next-token-ms")
    memory_limit = parse_size("--memory-limit", memory) if memory else None
    for option, value in (("--memory-limit", memory), ("--max-next-token-ms", next_ms)):
        if value is not None and not opt("--max-batch"):
            raise pytest.UsageError(f"{option} applies to the max-batch search only; add "
                                    "--max-batch")
    if next_ms is not None and next_ms <= 0:
        raise pytest.UsageError(f"--max-next-token-ms {next_ms}: expected a time > 0")
    return {"max_batch": opt("--max-batch"),
            "memory_limit": memory_limit,
            "max_next_token_ms": next_ms,
            "max_batch_cap": positive_int("--max-batch-cap", str(opt("--max-batch-cap")),
                                          maximum=MAX_BATCH)}

"""What a run set out to run, and whether it ran all of it: the selection in `run.json`.

Once collection ends (after -k, -m and --shard), the controller writes the selection into
`run.json` with status "running" (under pytest-xdist the workers collect, alike, and hand it
over in a file): per suite, the (case, test) pairs, their count and hash, the same figures of
the whole selection before --shard took its part, and the pytest arguments that selected them.
At the end of the session the controller writes "complete", or "incomplete" when a selected
test has no record (an interrupt, `-x`, a killed worker), with how many never ran. A run
directory without `run.json`, or one that still says "running", did not finish.

A resume cannot drop what its run selected: `--resume` must select, of each suite the run has,
every test the run selected; it may select more, and add suites (as `llmgate run` adds perf
after the other suites).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

RUN_FILE = "run.json"
# The record that says whether every selected test ran, beside the suites' records.
COMPLETED = {"suite": "run", "case": "selection", "test": "completed"}


def tests_hash(tests) -> str:
    return hashlib.sha256(json.dumps(sorted(map(list, tests))).encode()).hexdigest()[:16]


def selection(chosen: set[tuple[str, str, str]], whole: set[tuple[str, str, str]],
              command: str) -> dict[str, dict]:
    """Per suite of the `whole` (suite, case, test) selection, the part `chosen` (a shard's)."""
    out = {}
    for suite in sorted({s for s, _, _ in whole}):
        tests = sorted((c, t) for s, c, t in chosen if s == suite)
        everything = [(c, t) for s, c, t in whole if s == suite]
        out[suite] = {"count": len(tests), "hash": tests_hash(tests),
                      "whole_count": len(everything), "whole_hash": tests_hash(everything),
                      "command": command, "tests": [list(t) for t in tests]}
    return out


def read_run(run_dir: Path) -> dict | None:
    """The run's `run.json`, or None where there is none (or a kill left it unreadable)."""
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_run(run_dir: Path, run: dict) -> None:
    write_json(Path(run_dir) / RUN_FILE, run)


def write_json(path: Path, data: dict) -> None:
    """Replace a file whole: a reader, or a kill mid-write, never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def resume_refusal(recorded: dict[str, dict], ours: dict[str, dict], run_id: str) -> str:
    """Why this session's selection cannot resume the run (one line), or "" when it selects,
    of each suite the run has, every test the run selected (and perhaps more: the run grows).
    A run from before selections were recorded has none to compare with."""
    for suite, mine in ours.items():
        theirs = recorded.get(suite)
        if theirs is None:
            continue
        lacks = {tuple(t) for t in theirs["tests"]} - {tuple(t) for t in mine["tests"]}
        if lacks:
            return (f"--resume: run {run_id!r} selected {theirs['count']} {suite} tests "
                    f"(`{theirs['command']}`); this selection has {mine['count']}, without "
                    f"{len(lacks)} of them: resume with the run's own selection (its -k, -m, "
                    "--model, --shard, ...), or a wider one")
    return ""


def never_ran(run: dict, rows: list[dict]) -> list[tuple[str, str, str]]:
    """The run's selected (suite, case, test) that have no record."""
    have = {(r["suite"], r["case"], r["test"]) for r in rows}
    return sorted((suite, case, test) for suite, part in run.get("selection", {}).items()
                  for case, test in part["tests"] if (suite, case, test) not in have)


def selected_count(run: dict) -> int:
    return sum(part["count"] for part in run.get("selection", {}).values())


def completion_record(reason: str, selected: int) -> dict:
    """The record of a run that did not run all it selected (`reason` says how much and
    why), or of one that now has (after a resume), which replaces an earlier failing one."""
    return {**COMPLETED, "outcome": "failed" if reason else "passed", "passed": not reason,
            "reason": reason or f"all {selected} selected cases ran"}


def is_completion(row: dict) -> bool:
    return all(row.get(k) == v for k, v in COMPLETED.items())


def status(run: dict | None, rows: list[dict]) -> tuple[str, str]:
    """("complete" | "incomplete" | "interrupted", why) of a run directory's `run.json` and
    latest `rows`."""
    if run is None:
        return "interrupted", f"no {RUN_FILE}: the run did not finish (interrupted or killed)"
    state = run.get("status", "complete")  # before statuses, run.json was written at the end
    if state == "running":
        if not run.get("selection"):
            return "interrupted", (f"{RUN_FILE} still says running, from before its selection "
                                   "was known: interrupted or killed")
        return "interrupted", (f"{RUN_FILE} still says running: {len(never_ran(run, rows))} "
                               f"of {selected_count(run)} selected cases have no record "
                               "(interrupted or killed, or still running)")
    if state == "incomplete":
        return "incomplete", run.get("incomplete", "")
    return "complete", ""


def merged(runs: list[tuple[Path, dict | None]], rows: list[dict]) -> tuple[dict, str]:
    """The selection of runs joined into one (per suite, the union of theirs) and, when it
    lacks something, why in one line: how many selected cases never ran, each shard of a
    sharded selection that is not among the runs (by K/N), each run that did not finish."""
    groups: dict[tuple[str, str], dict] = {}  # (suite, whole selection): its shards
    unfinished = []
    for path, run in runs:
        state, _ = status(run, rows)
        if state != "complete":
            unfinished.append(f"{path} {state}")
        for suite, part in (run or {}).get("selection", {}).items():
            group = groups.setdefault((suite, part["whole_hash"]), {
                "whole_count": part["whole_count"], "shards": set(), "of": 1, "tests": set(),
                "command": part["command"]})
            k, n = map(int, run.get("shard", "1/1").split("/"))
            group["shards"].add(k)
            group["of"] = n
            group["tests"] |= {tuple(t) for t in part["tests"]}
    joined: dict[str, dict] = {}
    missing_shards, selected, unknown = set(), 0, 0
    for (suite, _), group in groups.items():
        missing_shards |= {f"{k}/{group['of']}" for k in range(1, group["of"] + 1)
                           if k not in group["shards"]}
        selected += group["whole_count"]
        unknown += group["whole_count"] - len(group["tests"])  # the missing shards' share
        tests = sorted({*map(tuple, joined.get(suite, {}).get("tests", [])), *group["tests"]})
        joined[suite] = {"count": len(tests), "hash": tests_hash(tests), "whole_count":
                         len(tests), "whole_hash": tests_hash(tests),
                         "command": group["command"], "tests": [list(t) for t in tests]}
    missing = unknown + len(never_ran({"selection": joined}, rows))
    why = [f"shard {s} missing" for s in sorted(missing_shards)] + unfinished
    if not missing and not why:
        return joined, ""
    return joined, (f"{missing} of {selected} selected cases never ran: " if missing else "") \
        + "; ".join(why)

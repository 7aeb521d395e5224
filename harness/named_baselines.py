"""Baselines named with --perf-baseline or --accuracy-baseline that no case met.

Naming a baseline asks for a comparison with it: if no case of its suite met it, the gate
compared nothing and must not pass. Each suite's session end (`harness.perf.session`,
`harness.accuracy.session`) turns its names into run records here.
"""

from __future__ import annotations

from pathlib import Path

from harness.baselines import accuracy_tables, ours_baselines, perf_tables

RECORD_PREFIX = "baseline "  # a named baseline's run record is case "baseline <name>"


def unmatched(rows: list[dict], named: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """(option, suite, name) of the `named` baselines that no case of their suite met, for
    the suites `rows` has records of (`llmgate run` runs the perf suite in a session of its
    own)."""
    ran = {r["suite"] for r in rows}
    used = {(r["suite"], c["baseline"].split(":")[0]) for r in rows
            for c in r.get("comparisons", []) if isinstance(c, dict) and "baseline" in c}
    return [(option, suite, name) for option, suite, name in named
            if suite in ran and (suite, name) not in used]


def records(rows: list[dict], named: list[tuple[str, str, str]], root: Path) -> list[dict]:
    """A failing run record per unmatched named baseline (saying what it holds, under the
    baselines `root`); a passing one where a resumed run has since matched it."""
    failing = {name: f"{option} {name} matched no case; it has {holdings(root, suite, name)}"
               for option, suite, name in unmatched(rows, named)}
    earlier = {r["case"] for r in rows if r["suite"] == "run" and not r.get("passed")}
    out = []
    for _, _, name in named:
        reason = failing.get(name, "")
        if reason or RECORD_PREFIX + name in earlier:
            out.append({"suite": "run", "case": RECORD_PREFIX + name, "test": "-",
                        "outcome": "failed" if reason else "passed", "passed": not reason,
                        "reason": reason})
    return out


def failed_names(rows: list[dict]) -> list[str]:
    """The names of the named baselines `rows` records as unmatched."""
    return [r["case"].removeprefix(RECORD_PREFIX) for r in rows
            if r["suite"] == "run" and r["case"].startswith(RECORD_PREFIX) and not r["passed"]]


def holdings(root: Path, suite: str, name: str, shown: int = 4) -> str:
    """What a stored baseline could have matched, in a few words."""
    if suite == "perf":
        cells = [f"{r.model} {r.hardware} {r.dtype} bs{r.batch} "
                 + (f"grid in2^{r.grid[0][0]}..2^{r.grid[0][-1]}" if r.grid else
                    f"in{r.input_len or '*'} out{r.output_len or '*'}")
                 for r in perf_tables(root) if r.name == name]
    else:
        cells = [f"{r.model} {r.task} {r.hardware} {r.dtype}"
                 for r in accuracy_tables(root) if r.name == name]
    kind = "rows for"
    if not cells:
        baseline = ours_baselines(root, suite).get(name)
        cells, kind = (list(baseline.cases) if baseline else []), "cases"
    cells = list(dict.fromkeys(cells))
    more = f" (+{len(cells) - shown} more)" if len(cells) > shown else ""
    return f"{kind} {', '.join(cells[:shown])}{more}"

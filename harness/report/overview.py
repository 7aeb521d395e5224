"""The report's first table: one line per model (and port), one column per suite and dtype,
each cell the verdict of its cases, linking to them; and the per-model folds of the case
tables it links to."""

from __future__ import annotations

from collections import defaultdict

from harness.results import MEASURED_ONLY, tally

SUITES = ("numerics", "perf", "accuracy")
DTYPES = ("fp32", "bf16", "fp16", "w8a16", "w8a8")
BAD = ("failed", "error")


def anchor(suite: str, model: str) -> str:
    """The id of a model's cases in a suite's section."""
    return f"{suite}-{model}"


def _line(row: dict) -> str:
    port = row.get("port") or "engine"
    return row["model"] if port == "engine" else f"{row['model']} · {port}"


def _column_order(column: tuple[str, str]) -> tuple:
    suite, dtype = column
    return SUITES.index(suite), DTYPES.index(dtype) if dtype in DTYPES else len(DTYPES), dtype


def cell(tallies: list[str], suite: str, model: str) -> dict:
    """The verdict of one model's cases of one suite and dtype: failed where any failed or
    raised (or is of no known outcome), else passed where any passed, else measured only, else
    skipped; with its counts in words and where its cases are shown."""
    n, bad = len(tallies), sum(t not in ("passed", MEASURED_ONLY, "skipped") for t in tallies)
    if bad:
        state, text = "failed", f"{bad} of {n} failed"
    elif "passed" in tallies:
        measured = tallies.count(MEASURED_ONLY)
        state = "passed"
        text = f"{tallies.count('passed') + measured} of {n} passed" + (
            f" ({measured} measured only)" if measured else "")
    elif MEASURED_ONLY in tallies:
        state, text = "measured-only", f"{tallies.count(MEASURED_ONLY)} of {n} measured only"
    else:  # the sections show no skipped case: the list of skips has them
        state, text = "skipped", f"{n} skipped"
    return {"state": state, "text": text, "failed": bad, "total": n,
            "href": "#skips" if state == "skipped" else f"#{anchor(suite, model)}"}


def overview(rows: list[dict]) -> dict:
    """{"columns": [(suite, dtype)], "lines": [{"line", "model", "cells": [cell or None]}]}
    over the suites' case records (a run-wide record has no model)."""
    found: dict[tuple, list[str]] = defaultdict(list)
    models = {}
    for r in rows:
        if r.get("suite") in SUITES and r.get("model"):
            found[(_line(r), r["suite"], r.get("dtype") or "")].append(tally(r))
            models[_line(r)] = r["model"]
    columns = sorted({(s, d) for _, s, d in found}, key=_column_order)
    lines = [{"line": line, "model": models[line],
              "cells": [cell(found[(line, s, d)], s, models[line]) if (line, s, d) in found
                        else None for s, d in columns]}
             for line in sorted(models)]
    return {"columns": columns, "lines": lines}


def by_model(rows: list[dict]) -> list[dict]:
    """A suite's rows folded per model: {"model", "anchor", "rows", "failed"} (a fold with a
    failure opens by itself)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r.get("model") or ""].append(r)
    return [{"model": model, "anchor": anchor(part[0].get("suite", ""), model), "rows": part,
             "failed": sum(r.get("outcome") in BAD for r in part)}
            for model, part in sorted(groups.items())]

"""One self-contained HTML report per run, and a Markdown summary for CI job pages.

Everything comes from the run's records (`records-*.jsonl`, the same rows as the CSVs) and the
answer files they point to: the tables and the charts share one source of truth.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import defaultdict
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from harness.perf.gate import METRICS
from harness.perf.report import write_seed_csvs
from harness.report import charts
from harness.report.accuracy_view import accuracy_section
from harness.report.divergence import divergence_charts
from harness.report.history import history_charts, history_table, runs
from harness.report.overview import by_model, overview
from harness.report.served_view import level, max_rate_apart, rate_charts
from harness.results import MEASURED_ONLY, latest_rows, load_records, measured_only, merge
from harness.selection import read_run, status

OUTCOMES = ("passed", "failed", "error", "skipped")
UNKNOWN = "unknown"  # a record whose outcome is none of OUTCOMES: shown, counted, never a pass
SLOWDOWNS_LISTED = 5
COLUMN = {"first_token": "forward_first_token_time(ms)",
          "next_token": "forward_next_token_time(ms)",
          "e2e_throughput": "e2e_throughput_tokens_per_s", "goodput": "good_request_pct"}


def _outcome(row: dict) -> str:
    return row.get("outcome") if row.get("outcome") in OUTCOMES else UNKNOWN


def _tally(row: dict) -> str:
    return MEASURED_ONLY if measured_only(row) else _outcome(row)


def _counts(rows: list[dict], outcomes: tuple[str, ...]) -> dict[str, int]:
    return {o: sum(_tally(r) == o for r in rows) for o in outcomes}


def run_verdict(run: dict | None, rows: list[dict]) -> dict:
    """The run's verdict in the same words on the page (`headline`), in summary.md and on the
    console (`title`, then `why`). `state`: pass, measured (passed, but some cases were only
    measured: no baseline was comparable), fail, or incomplete (it did not run all it
    selected, or it never finished: no run.json, or one that still says running)."""
    state, why = status(run, rows)
    if state != "complete":
        return {"state": "incomplete", "headline": state.upper(), "title": state.upper(),
                "why": why}
    # the run's own records (a resume's "all ran") count only where they fail
    tallies = [_tally(r) for r in rows if r.get("suite") != "run" or _outcome(r) != "passed"]
    gated, measured = tallies.count("passed"), tallies.count(MEASURED_ONLY)
    if not gated + measured or any(t in ("failed", "error", UNKNOWN) for t in tallies):
        return {"state": "fail", "headline": "GATES FAILED", "title": "FAILED", "why": ""}
    if measured:
        words = f"({gated} gated), {measured} measured only"
        return {"state": "measured", "headline": f"PASSED {words}", "title": f"passed {words}",
                "why": ""}
    return {"state": "pass", "headline": "ALL GATES PASSED", "title": "passed", "why": ""}


def ran(row: dict) -> str:
    """What an accuracy case scored: the reference, or the port by name and kind."""
    if row.get("runner") == "reference":
        return "the transformers reference"
    if not row.get("port"):  # a record from before records named their port
        return f"runner {row.get('runner', '')}"
    kind = row.get("port_kind")
    return f"port {row['port']}" + (f" ({kind})" if kind and kind != row["port"] else "")


def _by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(k) for k in keys)].append(row)
    return dict(sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])))


def reasons(row: dict) -> list[str]:
    """Every failure of a record, whole: the verdict's `failures` keeps what the one-line
    `reason` (pytest's message, cut) may have lost."""
    text = row.get("failures") or row.get("reason") or ""
    if not text and _outcome(row) == UNKNOWN:
        text = f"outcome {row.get('outcome')!r} is none of {', '.join(OUTCOMES)}"
    return [part for part in str(text).split("; ") if part]


def _number(row: dict, field: str) -> float | None:
    value = row.get(field)
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def is_ours(comparison: dict) -> bool:
    """A comparison with a saved run of ours (names are letters, digits, '.', '_', '-'), not
    with a source table's row (named `file:line`)."""
    return ":" not in comparison["baseline"]


def _stored(comparison: dict) -> tuple[str, str]:
    """(baseline, device): a source table by its file, whatever its row."""
    return comparison["baseline"].split(":")[0], comparison["device"]


def side_by_side(part: list[dict]) -> dict | None:
    """Per (hardware, dtype, batch, in, out, metric): our figure beside each stored device's,
    with the ratio (> 1: we are slower), a column per stored baseline and device."""
    columns, rows = {}, {}
    for r in part:
        for c in r.get("comparisons", []):
            columns.setdefault(_stored(c), f"{_stored(c)[0]} ({c['device']})")
            key = (r["hardware"], r["dtype"], r["batch"], r["seqlen"], r["out"],
                   list(METRICS).index(c["metric"]))
            row = rows.setdefault(key, {
                "case": r["case"], "outcome": _outcome(r), "on": r.get("device") or r["hardware"],
                "dtype": r["dtype"], "batch": r["batch"], "seqlen": r["seqlen"], "out": r["out"],
                "metric": c["metric"], "label": METRICS[c["metric"]][0], "unit": c["unit"],
                "ours": _number(r, COLUMN[c["metric"]]), "cells": {}})
            row["cells"].setdefault(_stored(c), c)
    if not rows:
        return None
    order = sorted(columns, key=columns.get)
    return {"columns": [{"label": columns[k]} for k in order],
            "rows": [{**row, "cells": [row["cells"].get(k) for k in order]}
                     for _, row in sorted(rows.items())]}


def ratio_charts(model: str, part: list[dict]) -> list[str]:
    """Per stored device of another kind: each case's ratio for each metric, against 1."""
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for r in part:
        for c in r.get("comparisons", []):
            if not c["same_device"] and math.isfinite(c["slowdown"]):
                ratios.setdefault(c["device"], {}).setdefault(METRICS[c["metric"]][0], {})[
                    f"bs{r['batch']} in{r['seqlen']}/out{r['out']}"] = c["slowdown"]
    return [charts.bars(f"{model}: ratio against {device} (> 1: we are slower)", "ratio",
                        dict(sorted(by_metric.items())), line_at=1.0)
            for device, by_metric in sorted(ratios.items())]


def perf_section(rows: list[dict]) -> dict:
    # A failed case stays, marked: the regressed case is the one a release manager needs.
    measured, max_rate = max_rate_apart([r for r in rows if _outcome(r) != "skipped"])
    models = []
    for (model,), part in _by(measured, "model").items():
        series = {name: {} for name in ("next", "first", "tput")}
        points = {name: {} for name in series}
        for r in part:
            hw = f"{r['hardware']} {r['dtype']}{level(r)}"  # served levels: series apart
            values = {"next": (f"{hw} in{r['seqlen']}/out{r['out']}", r["batch"], "next_token"),
                      "tput": (f"{hw} in{r['seqlen']}/out{r['out']}", r["batch"],
                               "e2e_throughput"),
                      # one line per output length: first-token latency vs input length
                      "first": (f"{hw} bs{r['batch']} out{r['out']}", r["seqlen"],
                                "first_token")}
            for name, (label, x, metric) in values.items():
                y = _number(r, COLUMN[metric])
                if y is not None:
                    series[name].setdefault(label, []).append((x, y))
                    if _outcome(r) != "passed":
                        points[name].setdefault(f"{_outcome(r)} case", []).append((x, y))
                for c in r.get("comparisons", []):
                    if c["metric"] == metric:
                        points[name].setdefault(" ".join(_stored(c)) + " (baseline)",
                                                []).append((x, c["theirs"]))
        drawn = [
            charts.lines(f"{model}: next-token latency vs batch", "batch", "ms",
                         series["next"], points["next"], logx=True),
            charts.lines(f"{model}: first-token latency vs input length", "input tokens",
                         "ms", series["first"], points["first"], logx=True),
            charts.lines(f"{model}: E2E throughput vs batch", "batch", "tokens/s",
                         series["tput"], points["tput"], logx=True)]
        models.append({
            "model": model, "rows": sorted(part, key=lambda r: (r["hardware"], r["dtype"],
                                                                r["batch"], r["seqlen"],
                                                                r["out"])),
            "load": any("load_1m" in r for r in part),
            "side_by_side": side_by_side(part),
            "charts": [c for c in drawn if c] + ratio_charts(model, part)
            + rate_charts(model, part, max_rate)})
    max_batch = [r for r in rows if r.get("test") == "test_max_batch"]
    grid_means = [r for r in rows if r.get("test") == "test_grid_mean"]
    return {"models": models, "max_batch": max_batch, "grid_means": grid_means,
            "max_rate": max_rate}


def slowdowns(rows: list[dict], top: int = SLOWDOWNS_LISTED) -> list[dict]:
    """The largest ratios against saved runs of ours, gated or not: a run far slower than
    our last one says so even when no gate applies."""
    found = [{**c, "case": r["case"], "label": METRICS[c["metric"]][0]}
             for r in rows if r.get("suite") == "perf" for c in r.get("comparisons", [])
             if is_ours(c) and math.isfinite(c["slowdown"]) and c["slowdown"] > 1]
    return sorted(found, key=lambda c: -c["slowdown"])[:top]


def machine_load(run: dict) -> str:
    """The machine's load when the run started (absent on older runs: empty)."""
    if not isinstance(run.get("load_1m"), (int, float)):
        return ""
    cpus = f" on {run['cpu_count']} CPUs" if run.get("cpu_count") else ""
    return f"machine load {_num(run['load_1m'], 3)} (1-minute average){cpus}"


def context(run_dir: Path, rows: list[dict] | None = None) -> dict:
    """What the templates show of the run's latest `rows` (default: read from `run_dir`) and
    of the runs beside it (read once)."""
    run_dir = Path(run_dir)
    rows = latest_rows(load_records(run_dir)) if rows is None else rows
    found = runs(run_dir.parent)
    recorded = read_run(run_dir)
    run = recorded or {}
    suites = {suite: part for (suite,), part in _by(rows, "suite").items()}
    problems = [r for r in rows if _outcome(r) in ("failed", "error", UNKNOWN)]
    cases = {r["case"] for r in rows}
    skips = [r for r in rows if r.get("outcome") == "skipped"]
    tallies = {_tally(r) for r in rows}
    outcomes = OUTCOMES[:1] + ((MEASURED_ONLY,) if MEASURED_ONLY in tallies else ()) \
        + OUTCOMES[1:] + ((UNKNOWN,) if UNKNOWN in tallies else ())
    totals = _counts(rows, outcomes)
    verdict = run_verdict(recorded, rows)
    return {
        "run": run, "run_id": run.get("run_id", run_dir.name),
        "rendered": time.strftime("%Y-%m-%d %H:%M:%S"), "load": machine_load(run),
        "totals": totals, "verdict": verdict, "passed": verdict["state"] in ("pass", "measured"),
        "suites": {s: _counts(part, outcomes) for s, part in suites.items()},
        "models": {m: _counts(part, outcomes) for (m,), part in _by(rows, "model").items()
                   if m},
        "problems": problems, "skips": skips, "slowdowns": slowdowns(rows),
        "overview": overview(rows),
        "numerics": by_model(suites.get("numerics", [])),
        "divergence": divergence_charts(suites.get("numerics", [])),
        "perf": perf_section(suites.get("perf", [])),
        "accuracy": accuracy_section(run_dir, suites.get("accuracy", [])),
        "history": [h for h in history_table(run_dir.parent, cases, found=found)
                    if h["runs"] > 1],
        "history_charts": history_charts(run_dir.parent, cases, found=found),
    }


def _environment() -> Environment:
    # HTML is escaped; summary.md is Markdown, escaped as Markdown by the `md` filter.
    env = Environment(loader=PackageLoader("harness.report", "templates"),
                      autoescape=select_autoescape(["html.j2"], default=False),
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(num=_num, md=_md, reasons=reasons, ran=ran)
    return env


def _md(value) -> str:
    """Text as literal Markdown: the characters that would start markup are escaped (an
    underscore only at a word's edge, where it would start emphasis)."""
    text = re.sub(r"([\\`*\[\]<|#])", r"\\\1", str(value))
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)


def _num(value, digits: int = 4) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if value != value:
        return "nan"
    return f"{value:.{digits}g}"


def render(run_dir: Path, move_latest: bool = False, rows: list[dict] | None = None) -> Path:
    """Write `index.html` and `summary.md` of the run's latest `rows` (default: read from
    `run_dir`) into the run directory; with `move_latest` (a run that executed cases, not a
    re-render of an old one) point `latest` at it."""
    run_dir = Path(run_dir)
    ctx = context(run_dir, rows)
    env = _environment()
    html = run_dir / "index.html"
    html.write_text(env.get_template("report.html.j2").render(**ctx), encoding="utf-8")
    (run_dir / "summary.md").write_text(env.get_template("summary.md.j2").render(**ctx),
                                        encoding="utf-8")
    latest = run_dir.parent / "latest"
    if move_latest and (latest.is_symlink() or not latest.exists()):
        tmp = run_dir.parent / f".latest-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name)
        tmp.replace(latest)  # atomic: a reader never sees no `latest`
    return html


def publish(run_dir: Path, rows: list[dict], move_latest: bool = False) -> Path:
    """Every file a run's latest `rows` make: `<suite>.csv`, the perf suite's CSVs in the
    seeds' format and the report (see `render`); returns the report."""
    merge(run_dir, rows)
    write_seed_csvs(run_dir, rows)
    return render(run_dir, move_latest, rows)

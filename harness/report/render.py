"""One self-contained HTML report per run, and a Markdown summary for CI job pages.

Everything comes from the run's records (`records-*.jsonl`, the same rows as the CSVs) and the
answer files they point to: the tables and the charts share one source of truth.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from harness.baselines import read_answers_file
from harness.report import charts
from harness.report.history import history_charts, history_table
from harness.results import latest_rows, load_records

OUTCOMES = ("passed", "failed", "error", "skipped")


def _counts(rows: list[dict]) -> dict[str, int]:
    return {o: sum(r.get("outcome") == o for r in rows) for o in OUTCOMES}


def _by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(k) for k in keys)].append(row)
    return dict(sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])))


def perf_section(rows: list[dict]) -> dict:
    measured = [r for r in rows if r.get("test") == "test_perf" and r.get("outcome") == "passed"]
    models = []
    for (model,), part in _by(measured, "model").items():
        next_vs_batch, first_vs_in, tput_vs_batch = {}, {}, {}
        baseline_next, baseline_first, baseline_tput = {}, {}, {}
        for r in part:
            hw = f"{r['hardware']} {r['dtype']}"
            next_vs_batch.setdefault(f"{hw} in{r['seqlen']}/out{r['out']}", []).append(
                (r["batch"], r["forward_next_token_time(ms)"]))
            tput_vs_batch.setdefault(f"{hw} in{r['seqlen']}/out{r['out']}", []).append(
                (r["batch"], r["e2e_throughput_tokens_per_s"]))
            first_vs_in.setdefault(f"{hw} bs{r['batch']}", []).append(
                (r["seqlen"], r["forward_first_token_time(ms)"]))
            for c in r.get("comparisons", []):
                target = {"next_token": (baseline_next, r["batch"]),
                          "e2e_throughput": (baseline_tput, r["batch"]),
                          "first_token": (baseline_first, r["seqlen"])}[c["metric"]]
                target[0].setdefault(f"{c['baseline']} {c['device']}", []).append(
                    (target[1], c["theirs"]))
        models.append({
            "model": model, "rows": sorted(part, key=lambda r: (r["hardware"], r["dtype"],
                                                                r["batch"], r["seqlen"],
                                                                r["out"])),
            "charts": [
                charts.lines(f"{model}: next-token latency vs batch", "batch", "ms",
                             next_vs_batch, baseline_next, logx=True),
                charts.lines(f"{model}: first-token latency vs input length", "input tokens",
                             "ms", first_vs_in, baseline_first, logx=True),
                charts.lines(f"{model}: E2E throughput vs batch", "batch", "tokens/s",
                             tput_vs_batch, baseline_tput, logx=True)]})
    max_batch = [r for r in rows if r.get("test") == "test_max_batch"]
    grid_means = [r for r in rows if r.get("test") == "test_grid_mean"]
    return {"models": models, "max_batch": max_batch, "grid_means": grid_means}


def _answers(run_dir: Path, row: dict) -> list[dict]:
    path = run_dir / row.get("answers_file", "")
    return read_answers_file(path) if row.get("answers_file") and path.exists() else []


def accuracy_section(run_dir: Path, rows: list[dict]) -> dict:
    cases = []
    for r in rows:
        if r.get("suite") != "accuracy" or r.get("outcome") == "skipped":
            continue
        comparisons = r.get("comparisons", [])
        flipped = next((c.get("flipped", []) for c in comparisons if c.get("flipped")), [])
        case = {"row": r, "comparisons": comparisons, "flipped": flipped,
                "categories": r.get("categories", {})}
        if r.get("test") == "test_humaneval":
            case["problems"] = _answers(run_dir, r)
        elif case["categories"]:
            reference = {c["category"]: c["reference"] for c in comparisons}
            case["chart"] = charts.bars(f"{r['case']}: accuracy per category", "accuracy",
                                        {k: v["accuracy"] for k, v in
                                         case["categories"].items()},
                                        {k: reference[k] for k in case["categories"]
                                         if k in reference} or None)
        cases.append(case)
    return {"cases": cases}


def context(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    rows = latest_rows(load_records(run_dir))
    run_file = run_dir / "run.json"
    run = json.loads(run_file.read_text()) if run_file.exists() else {}
    suites = {suite: part for (suite,), part in _by(rows, "suite").items()}
    problems = [r for r in rows if r.get("outcome") in ("failed", "error")]
    cases = {r["case"] for r in rows}
    skips = [r for r in rows if r.get("outcome") == "skipped"]
    return {
        "run": run, "run_id": run.get("run_id", run_dir.name),
        "rendered": time.strftime("%Y-%m-%d %H:%M:%S"),
        "totals": _counts(rows), "passed": not problems and bool(rows),
        "suites": {s: _counts(part) for s, part in suites.items()},
        "models": {m: _counts(part) for (m,), part in _by(rows, "model").items() if m},
        "problems": problems, "skips": skips,
        "numerics": suites.get("numerics", []),
        "perf": perf_section(suites.get("perf", [])),
        "accuracy": accuracy_section(run_dir, suites.get("accuracy", [])),
        "history": [h for h in history_table(run_dir.parent, cases) if h["runs"] > 1],
        "history_charts": history_charts(run_dir.parent, cases),
    }


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("harness.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["num"] = _num
    return env


def _num(value, digits: int = 4) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if value != value:
        return "nan"
    return f"{value:.{digits}g}"


def render(run_dir: Path, move_latest: bool = False) -> Path:
    """Write `index.html` and `summary.md` into the run directory; with `move_latest` (a run
    that executed cases, not a re-render of an old one) point `latest` at it."""
    run_dir = Path(run_dir)
    ctx = context(run_dir)
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

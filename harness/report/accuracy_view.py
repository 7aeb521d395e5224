"""The report's accuracy section: per case its categories (charted against the baseline),
comparisons, flipped questions and, for HumanEval, each problem's outcome."""

from __future__ import annotations

from pathlib import Path

from harness.baselines import read_answers_file
from harness.report import charts
from harness.report.overview import anchor


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
        first = r.get("model") not in {c["row"].get("model") for c in cases}
        case = {"row": r, "comparisons": comparisons, "flipped": flipped,
                "categories": r.get("categories", {}),
                "anchor": anchor("accuracy", r.get("model", "")) if first else None}
        if r.get("test") == "test_humaneval":
            case["problems"] = _answers(run_dir, r)
        elif case["categories"]:
            reference = {c["category"]: c["reference"] for c in comparisons}
            accuracy = {"this run": {k: v["accuracy"] for k, v in case["categories"].items()}}
            baseline = {k: reference[k] for k in case["categories"] if k in reference}
            case["chart"] = charts.bars(f"{r['case']}: accuracy per category", "accuracy",
                                        {**accuracy, **({"baseline": baseline} if baseline
                                                        else {})})
        cases.append(case)
    return {"cases": cases}

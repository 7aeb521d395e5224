"""Where the failing numerics cases diverge, drawn: per step (the prefill, then each decode
step) and, where the layers were localized, per decoder layer."""

from __future__ import annotations

import math

from harness.report import charts


def divergence_charts(rows: list[dict]) -> list[str]:
    """Under each failing teacher-forced case, its per-step curve (step 0: the prefill),
    and where the layers were localized, its per-layer relative errors."""
    drawn = []
    for r in rows:
        if r.get("outcome") == "failed" and len(r.get("step_max_abs_diff") or ()) > 1:
            steps = range(len(r["step_max_abs_diff"]))
            drawn.append(charts.lines(
                f"{r['case']}: where it diverges", "step (0: prefill)", "max over the rows",
                {"max |dlogit|": list(zip(steps, r["step_max_abs_diff"])),
                 "max KL": list(zip(steps, r["step_max_kl"]))}))
        if r.get("block_labels"):  # localized: a failing case, or any with --localize
            drawn.append(layer_chart(r))
    return [c for c in drawn if c]


ZERO_DRAWN_AT = 1e-9


def layer_chart(r: dict) -> str | None:
    """Relative error per decoder layer, one line per sub-block (`block_labels` as
    `harness.numerics.layers` names them), the first block beyond its tolerance marked."""
    series, points = {}, {}
    for label, error in zip(r.get("block_labels") or (), r.get("block_rel_err") or ()):
        words = label.split()
        if words[0] != "layer" or not isinstance(error, (int, float)) \
                or not math.isfinite(error):
            continue
        xy = (int(words[1]), max(error, ZERO_DRAWN_AT))  # a log axis has no 0
        series.setdefault(" ".join(words[2:]) or "layer output", []).append(xy)
        if label == r.get("first_divergence_block"):
            points[f"first beyond: {label}"] = [xy]
    return charts.lines(f"{r['case']}: where in the model", "decoder layer",
                        "relative error vs fp32 reference", series, points, logy=True)

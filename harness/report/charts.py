"""Charts for the report: matplotlib figures rendered to inline SVG strings.

matplotlib draws to SVG without a display and embeds no external resource, so the report stays
one self-contained file that works offline; text stays text (searchable, small).
"""

from __future__ import annotations

import io
import re

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "llmgate", "font.size": 9,
                     "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100})


def svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    text = re.sub(r"^.*?(<svg)", r"\1", text, flags=re.S)  # drop the XML prologue
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)


def lines(title: str, xlabel: str, ylabel: str, series: dict[str, list[tuple[float, float]]],
          points: dict[str, list[tuple[float, float]]] | None = None, logx: bool = False,
          xticks: list[str] | None = None, logy: bool = False) -> str | None:
    """One line per series (x sorted); `points` (baselines, failed cases) drawn as markers
    alongside; `xticks` labels the integer positions 0, 1, ... None when no series has two x
    values: a line chart of single points would only be a column of dots."""
    if not any(len({x for x, _ in xy}) > 1 for xy in series.values()):
        return None
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    for label, xy in sorted(series.items()):
        xy = sorted(xy)
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=label)
    for label, xy in sorted((points or {}).items()):
        ax.scatter([x for x, _ in xy], [y for _, y in xy], marker="x", s=40, label=label)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    if xticks is not None:
        ax.set_xticks(range(len(xticks)), xticks, rotation=30, ha="right", fontsize=7)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=7, loc="best")
    return svg(fig)


def bars(title: str, ylabel: str, series: dict[str, dict[str, float]],
         line_at: float | None = None) -> str:
    """Grouped bars: per label (the first series' keys) one bar of each series; `line_at`
    draws a horizontal reference line (e.g. a ratio of 1)."""
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    labels = list(next(iter(series.values())))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar([x + offset for x in range(len(labels))], [values.get(k, 0) for k in labels],
               width, label=name)
    if line_at is not None:
        ax.axhline(line_at, color="#555", linewidth=0.8)
    if len(series) > 1:
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set(title=title, ylabel=ylabel)
    return svg(fig)

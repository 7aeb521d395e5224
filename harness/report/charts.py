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
          points: dict[str, list[tuple[float, float]]] | None = None, logx: bool = False) -> str:
    """One line per series (x sorted); `points` (e.g. baselines) drawn as markers alongside."""
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    for label, xy in sorted(series.items()):
        xy = sorted(xy)
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=label)
    for label, xy in sorted((points or {}).items()):
        ax.scatter([x for x, _ in xy], [y for _, y in xy], marker="x", s=40,
                   label=f"{label} (baseline)")
    if logx:
        ax.set_xscale("log", base=2)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if series or points:
        ax.legend(fontsize=7, loc="best")
    return svg(fig)


def bars(title: str, ylabel: str, values: dict[str, float],
         reference: dict[str, float] | None = None) -> str:
    """Bars per label, with an optional reference value per label drawn beside them."""
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    labels = list(values)
    xs = range(len(labels))
    width = 0.4 if reference else 0.8
    ax.bar([x - (width / 2 if reference else 0) for x in xs], [values[k] for k in labels],
           width, label="this run")
    if reference:
        ax.bar([x + width / 2 for x in xs], [reference.get(k, 0) for k in labels], width,
               label="baseline")
        ax.legend(fontsize=7)
    ax.set_xticks(list(xs), labels, rotation=20, ha="right")
    ax.set(title=title, ylabel=ylabel)
    return svg(fig)

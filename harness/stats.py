"""Statistics every gate uses, all from scipy: no hand-written distributions here."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def describe(samples) -> dict[str, float]:
    """median, p90, min, max (NaN for no samples, and NaN in -> NaN out)."""
    values = np.asarray(list(samples), dtype=float)
    if values.size == 0 or np.isnan(values).any():
        return dict.fromkeys(("median", "p90", "min", "max"), float("nan"))
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
            "min": float(values.min()), "max": float(values.max())}


def slower_p_value(candidate, baseline, higher_is_better: bool = False) -> float:
    """One-sided Mann-Whitney U: p-value for "candidate samples are worse" (larger latencies,
    or smaller throughputs with `higher_is_better`)."""
    candidate, baseline = list(candidate), list(baseline)
    if not candidate or not baseline:
        return float("nan")
    alternative = "less" if higher_is_better else "greater"
    return float(stats.mannwhitneyu(candidate, baseline, alternative=alternative).pvalue)


def smallest_slower_p_value(candidates: int, baselines: int) -> float:
    """The smallest p-value `slower_p_value` can give for samples of these sizes (every
    candidate worse than every baseline sample): at or above alpha, the test cannot tell a
    slowdown from noise whatever was measured (2 vs 2: 1/6)."""
    if not candidates or not baselines:
        return float("nan")
    return slower_p_value(range(baselines, baselines + candidates), range(baselines))


def mcnemar_worse_p_value(lost: int, gained: int) -> float:
    """Exact one-sided McNemar test on the discordant pairs: p-value for "the candidate is
    worse", where `lost` questions went right -> wrong and `gained` wrong -> right."""
    if lost + gained == 0:
        return 1.0
    return float(stats.binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue)


def proportion_interval(successes: int, total: int,
                        confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if total == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(successes, total).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def standard_error(proportion: float, total: int) -> float:
    return math.sqrt(proportion * (1 - proportion) / total) if total else float("nan")


def paired_difference(candidate, baseline, confidence: float = 0.95) -> dict[str, float]:
    """Mean of candidate - baseline over paired 0/1 outcomes, with a normal interval."""
    diff = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    if diff.size == 0:
        return {"difference": float("nan"), "low": float("nan"), "high": float("nan")}
    mean = float(diff.mean())
    se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else 0.0
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    return {"difference": mean, "low": mean - z * se, "high": mean + z * se}


def mean_bounds(values, confidence: float = 0.95) -> dict[str, float]:
    """Mean of independent `values` with one-sided Student-t bounds at `confidence`: `low`
    (the mean is above it) and `high` (below it); zero spread gives bounds equal to the mean,
    fewer than two values NaN bounds."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return dict.fromkeys(("mean", "low", "high"), float("nan"))
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan")}
    half = float(stats.t.ppf(confidence, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return {"mean": mean, "low": mean - half, "high": mean + half}


def wilcoxon_lower_p_value(differences) -> float:
    """One-sided Wilcoxon signed-rank test: p-value for "the differences lean negative" (1
    where every difference is zero)."""
    d = np.asarray(list(differences), dtype=float)
    if not np.any(d != 0):
        return 1.0
    return float(stats.wilcoxon(d, alternative="less", zero_method="wilcox").pvalue)

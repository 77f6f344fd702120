"""Uncertainty of accuracies measured on items: intervals, paired gains, paired tests (scipy.stats).

Every score here is a mean of per-item 0/1 outcomes, so every score is an estimate:

* one accuracy ``c / n``: the Wilson score interval (``binomtest(c, n).proportion_ci(method="wilson")``);
* a weighted objective ``sum_d w_d·acc_d / sum_d w_d``: a percentile bootstrap over items, each dataset's
  items resampled on their own (``scipy.stats.bootstrap`` with one sample per dataset), seeded;
* the gain of A over B on the same items: the mean of the per-item differences ``a_i - b_i``, with a paired
  bootstrap interval (the differences resampled, per dataset for a weighted gain) and the exact McNemar test
  (a two-sided binomial test of the discordant pairs: ``binomtest(n_ab, n_ab + n_ba, 0.5)``);
* the proxy's fidelity: Spearman's rank correlation (``scipy.stats.spearmanr``).

"A beat B at 95%" means the lower end of the paired interval is above zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
N_RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its ``level`` interval [low, high] (accuracies and gains as fractions)."""

    value: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    def as_points(self, sign: bool = False) -> str:
        """``"52.3 [44.1, 60.2]"`` in points (x100); ``sign``: ``"+3.1 [-0.4, +6.5]"``."""
        f = "{:+.1f}" if sign else "{:.1f}"
        return f"{f.format(100 * self.value)} [{f.format(100 * self.low)}, {f.format(100 * self.high)}]"

    def as_fraction(self) -> str:
        """``"0.523 [0.441, 0.602]"``."""
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def to_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n, "level": self.level}


@dataclass(frozen=True)
class PairedGain:
    """A's gain over B on ``n`` shared items: ``gain`` (interval in points via Estimate), the discordant
    counts (``a_only``: A right and B wrong; ``b_only``) and the exact McNemar two-sided p-value."""

    gain: Estimate
    a_only: int
    b_only: int
    p_value: float

    @property
    def significant(self) -> bool:
        """A beat B at the interval's level: the whole interval is above zero."""
        return self.gain.low > 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "gain": self.gain.to_dict(),
            "a_only": self.a_only,
            "b_only": self.b_only,
            "p_value": self.p_value,
            "significant": self.significant,
        }


def wilson(correct: int, n: int, level: float = LEVEL) -> Estimate:
    """``correct / n`` with the Wilson score interval; n = 0 gives NaN bounds."""
    from scipy.stats import binomtest

    if n <= 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, level)
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return Estimate(correct / n, float(ci.low), float(ci.high), int(n), level)


def accuracy(outcomes: Sequence[bool], level: float = LEVEL) -> Estimate:
    """:func:`wilson` of a list of per-item outcomes."""
    return wilson(int(sum(bool(x) for x in outcomes)), len(outcomes), level)


def _weighted_bootstrap(
    samples: Mapping[str, np.ndarray], weights: Mapping[str, float], level: float, seed: int
) -> Estimate:
    """``sum_d w_d·mean(x_d) / sum_d w_d`` with a percentile bootstrap, each sample resampled on its own."""
    from scipy.stats import bootstrap

    names = [d for d in samples if len(samples[d]) and weights.get(d, 0.0) > 0]
    if not names:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, level)
    w = np.array([float(weights[d]) for d in names])
    w = w / w.sum()
    data = tuple(np.asarray(samples[d], dtype=float) for d in names)

    def stat(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
        return sum(wi * np.mean(x, axis=axis) for wi, x in zip(w, xs, strict=True))

    value = float(stat(*data))
    n = sum(len(x) for x in data)
    if all(np.ptp(x) == 0 for x in data):  # every resample gives the same value
        return Estimate(value, value, value, n, level)
    res = bootstrap(
        data,
        stat,
        n_resamples=N_RESAMPLES,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return Estimate(value, float(ci.low), float(ci.high), n, level)


def weighted_accuracy(
    outcomes: Mapping[str, Sequence[bool]],
    weights: Mapping[str, float],
    level: float = LEVEL,
    seed: int = SEED,
) -> Estimate:
    """The weighted objective ``sum_d w_d·acc_d / sum_d w_d`` over the datasets in ``outcomes`` with a
    seeded percentile bootstrap over items (stratified by dataset). One dataset: the plain accuracy with a
    bootstrap interval (use :func:`wilson` for that case)."""
    return _weighted_bootstrap(
        {d: np.asarray([bool(x) for x in v], dtype=float) for d, v in outcomes.items()}, weights, level, seed
    )


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """(A right & B wrong, B right & A wrong, exact two-sided McNemar p) over paired outcomes."""
    from scipy.stats import binomtest

    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    if a_only + b_only == 0:
        return 0, 0, 1.0
    return a_only, b_only, float(binomtest(a_only, a_only + b_only, 0.5).pvalue)


def paired_gain(
    a: Mapping[str, Sequence[bool]],
    b: Mapping[str, Sequence[bool]],
    weights: Mapping[str, float],
    level: float = LEVEL,
    seed: int = SEED,
) -> PairedGain:
    """A's weighted gain over B on paired outcomes (``a[d][i]`` and ``b[d][i]`` are the same item):
    ``sum_d w_d·mean_i(a_di - b_di) / sum_d w_d`` with a paired bootstrap (each dataset's differences
    resampled), and the exact McNemar p-value over all the pairs. Per dataset: pass one dataset."""
    diffs = {}
    flat_a: list[bool] = []
    flat_b: list[bool] = []
    for d in a:
        if d not in b:
            continue
        xa, xb = [bool(x) for x in a[d]], [bool(x) for x in b[d]]
        if len(xa) != len(xb):
            raise ValueError(f"{d}: {len(xa)} and {len(xb)} outcomes are not paired")
        diffs[d] = np.asarray(xa, dtype=float) - np.asarray(xb, dtype=float)
        if weights.get(d, 0.0) > 0:
            flat_a += xa
            flat_b += xb
    gain = _weighted_bootstrap(diffs, weights, level, seed)
    a_only, b_only, p = mcnemar_exact(flat_a, flat_b)
    return PairedGain(gain, a_only, b_only, p)


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float] | None:
    """(rho, two-sided p) of Spearman's rank correlation; None with fewer than 3 pairs or a constant side."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    res = spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)

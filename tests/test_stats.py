"""objectives.stats against values computed independently here: closed forms on the same counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from objectives.stats import accuracy, mcnemar_exact, paired_gain, spearman, weighted_accuracy, wilson

Z = 1.959963984540054  # the 97.5% normal quantile


def _wilson_closed_form(c: int, n: int) -> tuple[float, float]:
    p = c / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("c", "n"), [(0, 20), (7, 20), (113, 200), (200, 200), (1, 3)])
def test_wilson_matches_the_closed_form(c, n):
    est = wilson(c, n)
    lo, hi = _wilson_closed_form(c, n)
    assert est.value == c / n and est.n == n
    assert est.low == pytest.approx(lo, abs=1e-12) and est.high == pytest.approx(hi, abs=1e-12)
    assert accuracy([True] * c + [False] * (n - c)) == est


def test_wilson_matches_statsmodels_when_installed():
    sm = pytest.importorskip("statsmodels.stats.proportion")
    lo, hi = sm.proportion_confint(57, 200, alpha=0.05, method="wilson")
    est = wilson(57, 200)
    assert (est.low, est.high) == pytest.approx((lo, hi), abs=1e-12)


def test_bootstrap_of_a_bernoulli_mean_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    x = rng.random(400) < 0.6
    p = x.mean()
    se = math.sqrt(p * (1 - p) / len(x))
    est = weighted_accuracy({"A": x.tolist()}, {"A": 1.0})
    assert est.value == pytest.approx(p)
    # percentile bootstrap of a mean of 400 items: within ~0.1 SE of p ± z·SE (Monte-Carlo error of 2000 draws)
    assert est.low == pytest.approx(p - Z * se, abs=0.15 * se)
    assert est.high == pytest.approx(p + Z * se, abs=0.15 * se)
    assert weighted_accuracy({"A": x.tolist()}, {"A": 1.0}) == est  # seeded: the same interval again


def test_weighted_bootstrap_matches_the_stratified_normal_approximation():
    rng = np.random.default_rng(2)
    a, b = rng.random(300) < 0.3, rng.random(500) < 0.8
    wa, wb = 2.0, 1.0
    pa, pb = a.mean(), b.mean()
    value = (wa * pa + wb * pb) / (wa + wb)
    var = (wa / 3) ** 2 * pa * (1 - pa) / len(a) + (wb / 3) ** 2 * pb * (1 - pb) / len(b)
    est = weighted_accuracy({"A": a.tolist(), "B": b.tolist()}, {"A": wa, "B": wb})
    se = math.sqrt(var)
    assert est.value == pytest.approx(value)
    assert est.low == pytest.approx(value - Z * se, abs=0.15 * se)
    assert est.high == pytest.approx(value + Z * se, abs=0.15 * se)
    assert est.n == 800


def test_mcnemar_exact_is_the_binomial_test_of_the_discordant_pairs():
    a = [True] * 30 + [False] * 10 + [True] * 50 + [False] * 10
    b = [False] * 30 + [True] * 10 + [True] * 50 + [False] * 10
    a_only, b_only, p = mcnemar_exact(a, b)
    assert (a_only, b_only) == (30, 10)
    # two-sided exact: 2 * P(X >= 30), X ~ Bin(40, 1/2) (symmetric)
    tail = sum(math.comb(40, k) for k in range(30, 41)) / 2**40
    assert p == pytest.approx(2 * tail, rel=1e-9)
    assert mcnemar_exact([True, False], [True, False]) == (0, 0, 1.0)


def test_paired_gain_interval_matches_the_paired_normal_approximation():
    rng = np.random.default_rng(3)
    b = rng.random(600) < 0.5
    flip = rng.random(600)
    a = np.where(flip < 0.15, True, np.where(flip < 0.20, False, b))  # 15% turned right, 5% turned wrong
    d = a.astype(float) - b.astype(float)
    se = d.std(ddof=0) / math.sqrt(len(d))
    pg = paired_gain({"A": a.tolist()}, {"A": b.tolist()}, {"A": 1.0})
    assert pg.gain.value == pytest.approx(d.mean())
    assert pg.gain.low == pytest.approx(d.mean() - Z * se, abs=0.15 * se)
    assert pg.gain.high == pytest.approx(d.mean() + Z * se, abs=0.15 * se)
    assert (pg.a_only, pg.b_only) == (int(((a) & (~b)).sum()), int(((~a) & b).sum()))
    n_dis, k = pg.a_only + pg.b_only, max(pg.a_only, pg.b_only)
    assert pg.p_value == pytest.approx(2 * sum(math.comb(n_dis, i) for i in range(k, n_dis + 1)) / 2**n_dis)
    assert pg.significant and pg.p_value < 1e-3


def test_a_gain_inside_the_noise_is_not_significant():
    a = [True] * 11 + [False] * 9
    b = [True] * 10 + [False] * 10  # one item apart out of 20
    pg = paired_gain({"A": a}, {"A": b}, {"A": 1.0})
    assert pg.gain.value == pytest.approx(0.05) and pg.gain.low <= 0 and not pg.significant
    assert pg.p_value == 1.0  # 1 discordant pair: binomtest(1, 1) two-sided


def test_spearman_against_scipy_and_ranks():
    from scipy.stats import pearsonr, rankdata

    x, y = [0.1, 0.5, 0.3, 0.9, 0.7], [0.2, 0.4, 0.5, 0.8, 0.6]
    rho, _ = spearman(x, y)
    assert rho == pytest.approx(pearsonr(rankdata(x), rankdata(y)).statistic)
    assert spearman([0.1, 0.2], [0.3, 0.4]) is None

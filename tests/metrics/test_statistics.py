"""Paired statistics against brute-force formulas, hand counts and SciPy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from engine.metrics import (
    MetricInputError,
    bland_altman,
    delong_roc_variance,
    delong_test,
    mcnemar_test,
    pearson,
    wilcoxon_test,
)


# --- DeLong --------------------------------------------------------------------------------------

def _brute_force_delong(y, scores_list):
    """DeLong et al. (1988) with explicit loops: AUCs and their covariance matrix S10/m + S01/n."""
    pos = [i for i in range(len(y)) if y[i] == 1]
    neg = [j for j in range(len(y)) if y[j] == 0]
    m, n = len(pos), len(neg)

    def psi(a, b):
        return 1.0 if a > b else 0.5 if a == b else 0.0

    v10 = [[sum(psi(s[i], s[j]) for j in neg) / n for i in pos] for s in scores_list]
    v01 = [[sum(psi(s[i], s[j]) for i in pos) / m for j in neg] for s in scores_list]
    aucs = [sum(row) / m for row in v10]
    k = len(scores_list)
    cov = [[0.0] * k for _ in range(k)]
    for r in range(k):
        for s in range(k):
            s10 = sum((v10[r][i] - aucs[r]) * (v10[s][i] - aucs[s]) for i in range(m)) / (m - 1)
            s01 = sum((v01[r][j] - aucs[r]) * (v01[s][j] - aucs[s]) for j in range(n)) / (n - 1)
            cov[r][s] = s10 / m + s01 / n
    return aucs, cov


Y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1])
A = np.array([0.9, 0.3, 0.7, 0.7, 0.2, 0.5, 0.4, 0.7, 0.8, 0.1, 0.35, 0.6])  # ties, within and across classes
B = np.array([0.6, 0.5, 0.4, 0.8, 0.3, 0.6, 0.55, 0.2, 0.6, 0.4, 0.5, 0.3])


def test_delong_roc_variance_matches_brute_force():
    aucs, cov = _brute_force_delong(Y, [A])
    auc, var = delong_roc_variance(Y, A)
    assert auc == pytest.approx(aucs[0], abs=1e-12) and var == pytest.approx(cov[0][0], rel=1e-12)


def test_delong_test_matches_brute_force():
    (auc_a, auc_b), cov = _brute_force_delong(Y, [A, B])
    se = math.sqrt(cov[0][0] + cov[1][1] - 2 * cov[0][1])
    z = (auc_a - auc_b) / se
    res = delong_test(Y, A, B)
    assert res.auc_a == pytest.approx(auc_a, abs=1e-12) and res.auc_b == pytest.approx(auc_b, abs=1e-12)
    assert res.auc_difference == pytest.approx(auc_a - auc_b, abs=1e-12)
    assert res.se_difference == pytest.approx(se, rel=1e-10)
    assert res.z == pytest.approx(z, rel=1e-10)
    assert res.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-10)
    assert (res.n_positive, res.n_negative) == (6, 6)
    # swapping the predictors flips the sign only
    rev = delong_test(Y, B, A)
    assert rev.z == pytest.approx(-res.z) and rev.p_value == pytest.approx(res.p_value)


def test_delong_identical_predictors_give_p_one():
    res = delong_test(Y, A, A)
    assert res.auc_difference == 0.0 and res.z == 0.0 and res.p_value == 1.0
    # a monotone transform has the same ranks, hence the same AUC and structural components
    res = delong_test(Y, A, np.exp(3 * A))
    assert res.p_value == 1.0


def test_delong_clearly_better_predictor_has_small_p():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    good = y * 2.0 + rng.normal(size=200)
    noise = rng.normal(size=200)
    res = delong_test(y, good, noise)
    assert res.auc_a > 0.85 and abs(res.auc_b - 0.5) < 0.1
    assert res.p_value < 1e-6


def test_delong_input_errors():
    with pytest.raises(MetricInputError, match="2 positive"):
        delong_test([1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(MetricInputError, match="same length"):
        delong_test([1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3])
    with pytest.raises(MetricInputError, match="binary"):
        delong_roc_variance([1, 0, 2, 0], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(MetricInputError, match="NaN"):
        delong_roc_variance([1, 0, 1, 0], [0.1, np.nan, 0.3, 0.4])


# --- McNemar -------------------------------------------------------------------------------------

def _paired(both, only_a, only_b, neither):
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return np.array(a), np.array(b)


def test_mcnemar_exact_binomial_by_hand():
    a, b = _paired(both=20, only_a=8, only_b=2, neither=5)
    res = mcnemar_test(a, b)  # 10 discordant pairs < 25 → exact
    assert (res.b, res.c) == (8, 2) and res.method == "exact binomial"
    # two-sided: 2·P(X ≤ 2), X ~ Bin(10, ½) = 2·(1 + 10 + 45)/1024
    assert res.p_value == pytest.approx(112 / 1024, rel=1e-12)
    assert res.p_value == pytest.approx(stats.binomtest(2, 10, 0.5).pvalue, rel=1e-12)
    assert res.statistic == 2.0


def test_mcnemar_chi_square_with_continuity_correction():
    a, b = _paired(both=20, only_a=8, only_b=2, neither=5)
    res = mcnemar_test(a, b, exact=False)
    assert res.statistic == pytest.approx((8 - 2 - 1) ** 2 / 10)  # 2.5
    assert res.p_value == pytest.approx(stats.chi2.sf(2.5, 1))
    a, b = _paired(both=50, only_a=30, only_b=10, neither=7)
    res = mcnemar_test(a, b)  # 40 discordant pairs ≥ 25 → chi-square
    assert res.method.startswith("chi-square")
    assert res.statistic == pytest.approx(19 ** 2 / 40)
    assert res.p_value == pytest.approx(stats.chi2.sf(9.025, 1))
    forced = mcnemar_test(a, b, exact=True)
    assert forced.p_value == pytest.approx(stats.binomtest(10, 40).pvalue)


def test_mcnemar_degenerate_cases():
    a, b = _paired(both=10, only_a=0, only_b=0, neither=3)
    for exact in (None, True, False):
        res = mcnemar_test(a, b, exact=exact)
        assert (res.b, res.c) == (0, 0) and res.p_value == 1.0
    a, b = _paired(both=1, only_a=20, only_b=20, neither=1)
    res = mcnemar_test(a, b, exact=False)  # b = c: no evidence of a difference
    assert res.statistic == 0.0 and res.p_value == 1.0
    assert mcnemar_test(a, b).p_value == 1.0  # exact, 40 ≥ 25 → chi-square by default
    with pytest.raises(MetricInputError, match="at least one"):
        mcnemar_test([], [])
    with pytest.raises(MetricInputError, match="same length"):
        mcnemar_test([1, 0], [1])
    with pytest.raises(MetricInputError, match="binary"):
        mcnemar_test([1, 2], [1, 0])


# --- Wilcoxon ------------------------------------------------------------------------------------

def test_wilcoxon_matches_scipy():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.6, 0.9, 20)
    b = a - rng.normal(0.03, 0.02, 20)
    res = wilcoxon_test(a, b)
    want = stats.wilcoxon(a, b)
    assert res.statistic == pytest.approx(want.statistic) and res.p_value == pytest.approx(want.pvalue)
    assert res.n == 20 and res.median_difference == pytest.approx(np.median(a - b))


def test_wilcoxon_with_some_zero_differences_and_ties_matches_scipy():
    a = np.array([1.0, 2, 3, 4, 5, 6, 7, 8])
    b = np.array([1.0, 2.5, 2, 4.5, 5, 7, 5, 9])
    res = wilcoxon_test(a, b)
    want = stats.wilcoxon(a, b)
    assert res.statistic == pytest.approx(want.statistic) and res.p_value == pytest.approx(want.pvalue)


def test_wilcoxon_all_zero_differences():
    res = wilcoxon_test([0.8, 0.7, 0.9], [0.8, 0.7, 0.9])
    assert res.statistic == 0.0 and res.p_value == 1.0 and res.median_difference == 0.0
    with pytest.raises(MetricInputError):
        wilcoxon_test([], [])


# --- Pearson -------------------------------------------------------------------------------------

def test_pearson_matches_scipy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=30)
    y = 0.6 * x + rng.normal(scale=0.8, size=30)
    res = pearson(x, y)
    want = stats.pearsonr(x, y)
    assert res.r == pytest.approx(want.statistic) and res.p_value == pytest.approx(want.pvalue)
    # Fisher-z 95 % CI by hand
    z, half = math.atanh(res.r), 1.959963984540054 / math.sqrt(30 - 3)
    assert res.ci_low == pytest.approx(math.tanh(z - half))
    assert res.ci_high == pytest.approx(math.tanh(z + half))
    assert res.n == 30


def test_pearson_hand_value_and_edge_cases():
    res = pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5])
    # dx = [−2, −1, 0, 1, 2], dy = [−2, 0, 1, 0, 1]: Σdxdy = 6, Σdx² = 10, Σdy² = 6 → r = 6/√60
    assert res.r == pytest.approx(6 / math.sqrt(60))
    res = pearson([1, 2, 3], [2, 1, 4])
    assert math.isfinite(res.r) and math.isnan(res.ci_low)  # Fisher CI needs n > 3
    const = pearson([1, 2, 3, 4], [5, 5, 5, 5])
    assert math.isnan(const.r) and math.isnan(const.p_value)
    assert const.to_dict()["r"] is None
    with pytest.raises(MetricInputError):
        pearson([1], [2])


# --- Bland–Altman --------------------------------------------------------------------------------

def test_bland_altman_by_hand():
    res = bland_altman([10, 12, 14, 16], [9, 13, 12, 15])
    # d = [1, −1, 2, 1]; mean 0.75; Σ(d − 0.75)² = 0.0625 + 3.0625 + 1.5625 + 0.0625 = 4.75; SD = √(4.75/3)
    sd = math.sqrt(4.75 / 3)
    assert res.mean_difference == pytest.approx(0.75)
    assert res.sd_difference == pytest.approx(sd)
    assert res.lower_limit == pytest.approx(0.75 - 1.96 * sd)
    assert res.upper_limit == pytest.approx(0.75 + 1.96 * sd)
    assert res.n == 4
    json.dumps(res.to_dict(), allow_nan=False)


def test_bland_altman_input_errors():
    with pytest.raises(MetricInputError, match="at least 2"):
        bland_altman([1.0], [2.0])
    with pytest.raises(MetricInputError, match="same length"):
        bland_altman([1.0, 2.0], [2.0])
    with pytest.raises(MetricInputError, match="one-dimensional"):
        bland_altman([[1.0, 2.0]], [[2.0, 3.0]])

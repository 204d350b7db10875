"""Paired statistical tests used to compare models and measurements.

- :func:`delong_test` — two correlated ROC AUCs on the same cases (DeLong 1988, fast algorithm of
  Sun & Xu 2014, written here because SciPy/scikit-learn lack it).
- :func:`mcnemar_test` — two classifiers' correctness on the same cases.
- :func:`wilcoxon_test` — paired per-case scores (e.g. Dice of two models), SciPy's signed-rank test.
- :func:`pearson` — linear correlation (e.g. predicted vs reference volume), SciPy.
- :func:`bland_altman` — agreement of two measurement methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from engine.metrics.common import (JsonResult, MetricInputError, as_1d, as_binary, check_same_length,
                                   paired_values)

__all__ = [
    "delong_roc_variance", "DeLongResult", "delong_test", "McNemarResult", "mcnemar_test",
    "WilcoxonResult", "wilcoxon_test", "PearsonResult", "pearson", "BlandAltmanResult", "bland_altman",
]

#: McNemar switches from the exact binomial test to chi-square below this many discordant pairs.
MCNEMAR_EXACT_BELOW = 25


# --- DeLong --------------------------------------------------------------------------------------

def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank, per row of a 2-D array."""
    return stats.rankdata(x, method="average", axis=-1)


def delong_components(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong structural components of ``k`` score rows on the same binary labels.

    Sun & Xu (2014): with midranks of the positives alone (T_x), negatives alone (T_y) and pooled (T_z),
    the structural components (placement values) are V10_i = (T_z,i − T_x,i)/n for positive i — the
    fraction of negatives scored below it, ties counting ½ — and V01_j = 1 − (T_z,j − T_y,j)/m for
    negative j — the fraction of positives scored above it; AUC = mean(V10) = mean(V01).
    O(k·N log N) instead of the O(k·m·n) pairwise comparison. Returns (aucs[k], v10[k, m], v01[k, n]).
    """
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    tx = _midranks(pos)
    ty = _midranks(neg)
    tz = _midranks(np.hstack([pos, neg]))
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return v10.mean(axis=1), v10, v01


def _fast_delong(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix S10/m + S01/n (S: sample covariance, ddof=1, of the
    structural components) for ``k`` score rows on the same binary labels (≥ 2 positives, ≥ 2 negatives)."""
    aucs, v10, v01 = delong_components(scores, y)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / m + s01 / n


def _binary_inputs(y_true: object, *score_arrays: object) -> tuple[np.ndarray, list[np.ndarray]]:
    y = as_binary(as_1d(y_true, "y_true"), "y_true")
    scores = [as_1d(s, f"scores_{chr(ord('a') + i)}") for i, s in enumerate(score_arrays)]
    check_same_length(y_true=y, **{f"scores_{chr(ord('a') + i)}": s for i, s in enumerate(scores)})
    m = int(y.sum())
    if m < 2 or len(y) - m < 2:
        raise MetricInputError(f"DeLong needs at least 2 positive and 2 negative cases; got {m} positive "
                               f"and {len(y) - m} negative.")
    return y, scores


def delong_roc_variance(y_true: object, scores: object) -> tuple[float, float]:
    """(AUC, DeLong variance of the AUC) for binary ``y_true`` (1 = positive) and scores."""
    y, (s,) = _binary_inputs(y_true, scores)
    aucs, cov = _fast_delong(s[None, :], y)
    return float(aucs[0]), float(cov[0, 0])


@dataclass
class DeLongResult(JsonResult):
    """Paired comparison of two AUCs on the same cases (two-sided)."""

    auc_a: float
    auc_b: float
    auc_difference: float
    se_difference: float
    z: float
    p_value: float
    n_positive: int
    n_negative: int


def delong_test(y_true_binary: object, scores_a: object, scores_b: object) -> DeLongResult:
    """DeLong's test of H0: AUC_a = AUC_b for two scores of the *same* cases.

    The AUCs are correlated (same cases), so the variance of the difference is
    var_a + var_b − 2·cov_ab from the DeLong covariance; z = (AUC_a − AUC_b)/SE, p = 2·Φ(−|z|).
    If the difference has zero variance (e.g. identical scores) z is 0 when the AUCs are equal
    (p = 1) and ±inf otherwise (p = 0).
    """
    y, (a, b) = _binary_inputs(y_true_binary, scores_a, scores_b)
    aucs, cov = _fast_delong(np.vstack([a, b]), y)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se <= 1e-12:
        z = 0.0 if abs(diff) <= 1e-12 else math.copysign(math.inf, diff)
    else:
        z = diff / se
    p = float(2.0 * stats.norm.sf(abs(z)))
    return DeLongResult(auc_a=float(aucs[0]), auc_b=float(aucs[1]), auc_difference=diff, se_difference=se,
                        z=float(z), p_value=min(p, 1.0), n_positive=int(y.sum()), n_negative=int((~y).sum()))


# --- McNemar -------------------------------------------------------------------------------------

@dataclass
class McNemarResult(JsonResult):
    """McNemar's test on paired correctness. ``b``: only A correct; ``c``: only B correct."""

    b: int
    c: int
    statistic: float
    p_value: float
    method: str


def mcnemar_test(correct_a: object, correct_b: object, exact: bool | None = None) -> McNemarResult:
    """McNemar's test of H0: classifiers A and B have the same error rate on the same cases.

    Only the discordant pairs matter (b = A right/B wrong, c = A wrong/B right). ``exact=None`` picks the
    exact two-sided binomial test (b ~ Bin(b+c, ½); statistic = min(b, c)) when b + c < 25, where the
    chi-square approximation is poor, and otherwise the chi-square test with continuity correction,
    (|b − c| − 1)²/(b + c) on 1 df. ``exact=True/False`` forces one. No discordant pairs → p = 1.
    """
    a = as_binary(as_1d(correct_a, "correct_a"), "correct_a")
    bb = as_binary(as_1d(correct_b, "correct_b"), "correct_b")
    if check_same_length(correct_a=a, correct_b=bb) == 0:
        raise MetricInputError("mcnemar_test needs at least one pair.")
    b = int(np.sum(a & ~bb))
    c = int(np.sum(~a & bb))
    n = b + c
    use_exact = n < MCNEMAR_EXACT_BELOW if exact is None else bool(exact)
    if use_exact:
        p = 1.0 if n == 0 else float(stats.binomtest(min(b, c), n, 0.5, alternative="two-sided").pvalue)
        return McNemarResult(b=b, c=c, statistic=float(min(b, c)), p_value=min(p, 1.0),
                             method="exact binomial")
    if n == 0:
        return McNemarResult(b=b, c=c, statistic=0.0, p_value=1.0, method="chi-square, continuity corrected")
    stat = max(abs(b - c) - 1.0, 0.0) ** 2 / n
    return McNemarResult(b=b, c=c, statistic=float(stat), p_value=float(stats.chi2.sf(stat, df=1)),
                         method="chi-square, continuity corrected")


# --- Wilcoxon, Pearson, Bland–Altman -------------------------------------------------------------

@dataclass
class WilcoxonResult(JsonResult):
    """Wilcoxon signed-rank test on paired values (two-sided)."""

    statistic: float
    p_value: float
    n: int
    median_difference: float


def wilcoxon_test(a: object, b: object) -> WilcoxonResult:
    """Wilcoxon signed-rank test of H0: the paired differences a − b are symmetric about 0.

    Uses :func:`scipy.stats.wilcoxon` with its defaults (zero differences dropped, exact null
    distribution for small samples). All differences zero → statistic 0, p = 1 (no evidence of a shift).
    """
    x, y, n = paired_values(a, b, "wilcoxon_test")
    d = x - y
    median = float(np.median(d))
    if np.all(d == 0):
        return WilcoxonResult(statistic=0.0, p_value=1.0, n=n, median_difference=median)
    res = stats.wilcoxon(x, y)
    return WilcoxonResult(statistic=float(res.statistic), p_value=float(res.pvalue), n=n,
                          median_difference=median)


@dataclass
class PearsonResult(JsonResult):
    """Pearson correlation with its two-sided p-value and Fisher-z 95 % CI (NaN CI when n ≤ 3)."""

    r: float
    p_value: float
    n: int
    ci_low: float
    ci_high: float


def pearson(x: object, y: object) -> PearsonResult:
    """Pearson's r and p-value (:func:`scipy.stats.pearsonr`). Constant input → r and p are NaN."""
    xa, ya, n = paired_values(x, y, "pearson", minimum=2, names=("x", "y"))
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return PearsonResult(r=math.nan, p_value=math.nan, n=n, ci_low=math.nan, ci_high=math.nan)
    res = stats.pearsonr(xa, ya)
    lo = hi = math.nan
    if n > 3:
        ci = res.confidence_interval(confidence_level=0.95)
        lo, hi = float(ci.low), float(ci.high)
    return PearsonResult(r=float(res.statistic), p_value=float(res.pvalue), n=n, ci_low=lo, ci_high=hi)


@dataclass
class BlandAltmanResult(JsonResult):
    """Bland–Altman agreement of two methods; differences are ``a − b``."""

    mean_difference: float
    sd_difference: float
    lower_limit: float
    upper_limit: float
    n: int


def bland_altman(a: object, b: object) -> BlandAltmanResult:
    """Bias (mean of a − b), SD of the differences (ddof=1) and 95 % limits of agreement bias ± 1.96·SD."""
    x, y, n = paired_values(a, b, "bland_altman", minimum=2)
    d = x - y
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    return BlandAltmanResult(mean_difference=mean, sd_difference=sd, lower_limit=mean - 1.96 * sd,
                             upper_limit=mean + 1.96 * sd, n=n)

"""Classification metrics against a hand-typed confusion matrix, scikit-learn, SciPy and tabulated values."""

from __future__ import annotations

import json
import math
from fractions import Fraction as F

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from engine.metrics import (
    MetricInputError,
    class_metrics,
    classification_report,
    clopper_pearson,
    confusion_matrix,
    delong_ci,
    delong_roc_variance,
    one_vs_rest_auc,
)

# Rows = true class, columns = predicted class. N = 28, 19 correct.
CM = np.array([[5, 2, 1],
               [1, 6, 3],
               [0, 2, 8]])

# (tp, fp, fn, tn) per class, counted by hand from CM, and the rates as exact fractions.
HAND = {
    0: dict(tp=5, fp=1, fn=3, tn=19, precision=F(5, 6), sensitivity=F(5, 8), specificity=F(19, 20),
            npv=F(19, 22), f1=F(10, 14)),
    1: dict(tp=6, fp=4, fn=4, tn=14, precision=F(6, 10), sensitivity=F(6, 10), specificity=F(14, 18),
            npv=F(14, 18), f1=F(12, 20)),
    2: dict(tp=8, fp=4, fn=2, tn=14, precision=F(8, 12), sensitivity=F(8, 10), specificity=F(14, 18),
            npv=F(14, 16), f1=F(16, 22)),
}
RATES = ("precision", "sensitivity", "specificity", "npv", "f1")


def _labels_from_cm(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(t, p) for t in range(len(cm)) for p in range(len(cm)) for _ in range(cm[t, p])]
    return np.array([t for t, _ in pairs]), np.array([p for _, p in pairs])


def _probs_for(y_pred: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Probability rows whose arg-max is ``y_pred``."""
    p = rng.uniform(0.0, 1.0, (len(y_pred), k))
    p[np.arange(len(y_pred)), y_pred] = p.sum(axis=1)  # strictly the largest
    return p / p.sum(axis=1, keepdims=True)


def _scores(n_per_class, separation, seed):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(n_per_class)), n_per_class)
    logits = rng.normal(size=(len(y), len(n_per_class)))
    logits[np.arange(len(y)), y] += separation
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


# --- confusion matrix and per-class rates --------------------------------------------------------

def test_confusion_matrix_counts_by_hand():
    y_true = [0, 0, 1, 1, 1, 2, 2, 0]
    y_pred = [0, 1, 1, 1, 2, 2, 0, 0]
    assert confusion_matrix(y_true, y_pred, 3).tolist() == [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
    # a class nobody predicts or has still gets its row and column
    assert confusion_matrix([0, 1], [1, 1], 3).tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 0]]
    with pytest.raises(MetricInputError, match="0..2"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(MetricInputError, match="length"):
        confusion_matrix([0, 1], [0], 3)


def test_confusion_matrix_round_trip():
    y_true, y_pred = _labels_from_cm(CM)
    assert np.array_equal(confusion_matrix(y_true, y_pred, 3), CM)


def test_class_metrics_match_hand_counts():
    per_class = class_metrics(CM, ["T1", "T2", "T3"])
    assert [c.name for c in per_class] == ["T1", "T2", "T3"]
    for c, m in enumerate(per_class):
        want = HAND[c]
        assert (m.tp, m.fp, m.fn, m.tn) == (want["tp"], want["fp"], want["fn"], want["tn"])
        assert m.support == want["tp"] + want["fn"]
        for rate in RATES:
            assert getattr(m, rate) == pytest.approx(float(want[rate]), abs=1e-12), (c, rate)


def test_class_metrics_undefined_ratios_are_nan_and_f1_is_zero():
    cm = np.array([[3, 0, 1],
                   [2, 0, 0],   # class 1 is never predicted
                   [0, 0, 4]])
    m = class_metrics(cm)[1]
    assert math.isnan(m.precision)  # 0 / 0
    assert m.sensitivity == 0.0 and m.f1 == 0.0
    assert m.to_dict()["precision"] is None
    absent = class_metrics(np.array([[3, 1], [0, 0]]))[1]  # class 1 absent and never right
    assert math.isnan(absent.sensitivity) and absent.specificity == pytest.approx(3 / 4)
    assert absent.f1 == 0.0  # 2·0/(0 + 1 + 0): defined, because the class was predicted once


def test_class_metrics_rejects_bad_matrices():
    for bad in (np.ones((2, 3)), np.ones((1, 1)), np.array([[1, -1], [0, 2]]), np.array([[1.5, 0], [0, 1]])):
        with pytest.raises(MetricInputError):
            class_metrics(bad)
    with pytest.raises(MetricInputError, match="names"):
        class_metrics(CM, ["a", "b"])


# --- Clopper–Pearson -----------------------------------------------------------------------------

def test_clopper_pearson_tabulated_values():
    lo, hi = clopper_pearson(7, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.3475, 0.9333)
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(0.3085, abs=1e-4))  # 1 − 0.025^(1/10)
    assert clopper_pearson(10, 10) == (pytest.approx(0.6915, abs=1e-4), 1.0)
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-12)
    assert clopper_pearson(1, 1) == (pytest.approx(0.025), 1.0)


@pytest.mark.parametrize("k, n, level", [
    (7, 10, 0.95), (3, 40, 0.95), (19, 28, 0.9), (55, 60, 0.99), (1, 2, 0.95),
])
def test_clopper_pearson_matches_scipy_exact_binomial_ci(k, n, level):
    want = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    lo, hi = clopper_pearson(k, n, level)
    assert lo == pytest.approx(want.low, abs=1e-10) and hi == pytest.approx(want.high, abs=1e-10)
    assert lo <= k / n <= hi


def test_clopper_pearson_rejects_bad_input():
    for args in ((11, 10), (-1, 10), (0, 0), (2.5, 10), (3, 10, 1.0), (3, 10, 0.0), (True, 10)):
        with pytest.raises(MetricInputError):
            clopper_pearson(*args)
    assert clopper_pearson(np.int64(7), 10.0) == clopper_pearson(7, 10)


# --- AUC -----------------------------------------------------------------------------------------

def test_per_class_auc_matches_sklearn_including_ties():
    y, p = _scores((15, 20, 12), 1.0, seed=3)
    p = np.round(p, 1)  # many tied scores
    p = p / p.sum(axis=1, keepdims=True)
    per_class, macro, notes = one_vs_rest_auc(y, p)
    for c, est in enumerate(per_class):
        assert est.auc == pytest.approx(roc_auc_score(y == c, p[:, c]), abs=1e-12)
        assert est.ci_low <= est.auc <= est.ci_high
        # DeLong structural components average to the same AUC
        auc_dl, var = delong_roc_variance(y == c, p[:, c])
        assert auc_dl == pytest.approx(est.auc, abs=1e-12) and var == pytest.approx(est.variance, rel=1e-12)
    assert macro.auc == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    assert notes == []


def test_auc_ci_is_delong_normal_interval():
    y, p = _scores((30, 30, 30), 0.8, seed=5)
    per_class, _, _ = one_vs_rest_auc(y, p, level=0.9)
    for est in per_class:
        half = stats.norm.ppf(0.95) * math.sqrt(est.variance)
        assert est.ci_low == pytest.approx(max(0.0, est.auc - half)) and est.ci_high == pytest.approx(
            min(1.0, est.auc + half))


def test_auc_ci_contains_estimate_and_narrows_with_more_samples():
    small = one_vs_rest_auc(*_scores((15, 15, 15), 1.0, seed=11))
    large = one_vs_rest_auc(*_scores((150, 150, 150), 1.0, seed=11))
    for (per_s, mac_s, _), (per_l, mac_l, _) in [(small, large)]:
        for es, el in zip(per_s + [mac_s], per_l + [mac_l]):
            assert es.ci_low <= es.auc <= es.ci_high and el.ci_low <= el.auc <= el.ci_high
            assert el.ci_high - el.ci_low < 0.6 * (es.ci_high - es.ci_low)


def test_macro_auc_ci_equals_delong_for_two_classes():
    y, p = _scores((25, 18), 1.0, seed=7)
    per_class, macro, _ = one_vs_rest_auc(y, p)
    auc, var = delong_roc_variance(y == 1, p[:, 1])
    assert macro.auc == pytest.approx(auc, abs=1e-12)
    assert per_class[0].auc == pytest.approx(auc, abs=1e-12)  # class 0 with p0 = 1 − p1
    assert macro.variance == pytest.approx(var, rel=1e-9)
    assert (macro.ci_low, macro.ci_high) == pytest.approx(delong_ci(auc, var))


def test_perfect_separation_gives_auc_one_with_degenerate_ci():
    y = np.array([0, 0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    per_class, macro, _ = one_vs_rest_auc(y, np.column_stack([1 - p1, p1]))
    assert per_class[1].auc == 1.0 and per_class[1].variance == 0.0
    assert (per_class[1].ci_low, per_class[1].ci_high) == (1.0, 1.0)
    assert macro.auc == 1.0


def test_class_absent_from_y_true_has_no_auc_and_macro_uses_the_rest():
    y, p = _scores((12, 10, 14), 1.0, seed=2)
    k4 = np.column_stack([p * 0.9, np.full(len(y), 0.1)])  # a 4th class that never occurs
    per_class, macro, notes = one_vs_rest_auc(y, k4, class_names=["a", "b", "c", "d"])
    assert all(math.isnan(v) for v in (per_class[3].auc, per_class[3].ci_low, per_class[3].ci_high))
    assert any("'d'" in n and "absent" in n for n in notes)
    assert macro.auc == pytest.approx(np.mean([roc_auc_score(y == c, k4[:, c]) for c in range(3)]), abs=1e-12)
    assert macro.ci_low < macro.auc < macro.ci_high


def test_single_case_class_has_auc_but_no_ci():
    y = np.array([0, 0, 0, 1, 1, 1, 2])
    rng = np.random.default_rng(0)
    p = _probs_for(y, 3, rng)
    per_class, macro, notes = one_vs_rest_auc(y, p)
    assert per_class[2].auc == pytest.approx(roc_auc_score(y == 2, p[:, 2]))
    assert math.isnan(per_class[2].ci_low) and math.isnan(macro.ci_low)
    assert math.isfinite(macro.auc)
    assert any("≥ 2 cases" in n for n in notes)


def test_only_one_class_present_gives_no_auc_at_all():
    y = np.zeros(5, int)
    p = _probs_for(np.array([0, 1, 0, 0, 1]), 2, np.random.default_rng(1))
    per_class, macro, notes = one_vs_rest_auc(y, p)
    assert all(math.isnan(e.auc) for e in per_class) and math.isnan(macro.auc)
    assert any("only class" in n for n in notes)


def test_probability_validation():
    y = np.array([0, 1, 1])
    with pytest.raises(MetricInputError, match="sum to 1"):
        one_vs_rest_auc(y, np.array([[0.5, 0.6], [0.5, 0.5], [0.2, 0.8]]))
    with pytest.raises(MetricInputError, match="logits"):
        one_vs_rest_auc(y, np.array([[2.0, -1.0], [0.5, 0.5], [0.2, 0.8]]))
    with pytest.raises(MetricInputError, match="shape"):
        one_vs_rest_auc(y, np.array([[0.5, 0.5], [0.5, 0.5]]))
    with pytest.raises(MetricInputError, match="level"):
        one_vs_rest_auc(y, np.array([[0.5, 0.5], [0.5, 0.5], [0.2, 0.8]]), level=95)


def test_delong_ci_clips_and_handles_nan():
    assert delong_ci(0.98, 0.01) == (pytest.approx(0.98 - 1.959964 * 0.1, abs=1e-6), 1.0)
    assert all(math.isnan(v) for v in delong_ci(0.7, math.nan))


# --- the report ----------------------------------------------------------------------------------

def test_classification_report_end_to_end():
    y_true, y_pred = _labels_from_cm(CM)
    probs = _probs_for(y_pred, 3, np.random.default_rng(42))
    rep = classification_report(y_true, probs, ["T1", "T2", "T3"])
    assert rep.n == 28 and rep.confusion_matrix == CM.tolist()
    assert rep.accuracy == pytest.approx(19 / 28)
    want = stats.binomtest(19, 28).proportion_ci(method="exact")
    assert (rep.accuracy_ci_low, rep.accuracy_ci_high) == pytest.approx((want.low, want.high), abs=1e-10)
    for c, m in enumerate(rep.per_class):
        for rate in RATES:
            assert getattr(m, rate) == pytest.approx(float(HAND[c][rate]), abs=1e-12)
        assert m.auc == pytest.approx(roc_auc_score(y_true == c, probs[:, c]), abs=1e-12)
        assert m.auc_ci_low <= m.auc <= m.auc_ci_high
    for rate in RATES:  # macro = unweighted mean of the hand fractions
        want = float(sum(HAND[c][rate] for c in range(3)) / 3)
        assert getattr(rep.macro, rate) == pytest.approx(want, abs=1e-12)
    assert rep.macro.auc == pytest.approx(roc_auc_score(y_true, probs, multi_class="ovr"), abs=1e-12)
    assert rep.macro.auc_n_classes == 3 and rep.notes == []
    d = rep.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["per_class"][0]["name"] == "T1" and d["macro"]["f1"] == pytest.approx(rep.macro.f1)


def test_classification_report_macro_skips_undefined_and_notes_it():
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 0, 0, 2, 2, 0])  # class 1 is never predicted → its precision is 0/0
    probs = _probs_for(y_pred, 3, np.random.default_rng(0))
    rep = classification_report(y_true, probs, ["a", "b", "c"])
    assert math.isnan(rep.per_class[1].precision)
    defined = [m.precision for m in rep.per_class if math.isfinite(m.precision)]
    assert rep.macro.precision == pytest.approx(np.mean(defined))
    assert rep.macro.f1 == pytest.approx(np.mean([m.f1 for m in rep.per_class]))  # F1 is 0, not NaN
    assert any("precision" in n and "'b'" in n for n in rep.notes)
    assert rep.to_dict()["per_class"][1]["precision"] is None


def test_classification_report_input_errors():
    y = np.array([0, 1, 1])
    p = np.array([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    with pytest.raises(MetricInputError):
        classification_report(y, p, ["only"])
    with pytest.raises(MetricInputError, match="unique"):
        classification_report(y, p, ["a", "a"])
    with pytest.raises(MetricInputError, match="shape"):
        classification_report(y, p, ["a", "b", "c"])
    with pytest.raises(MetricInputError, match="integer"):
        classification_report([0, 0.5, 1], p, ["a", "b"])
    with pytest.raises(MetricInputError, match="level"):
        classification_report(y, p, ["a", "b"], ci_level=1.5)

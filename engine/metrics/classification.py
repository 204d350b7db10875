"""Multi-class classification metrics (e.g. T-stage prediction) with confidence intervals.

Conventions:

- Labels are integers ``0..K-1``; ``probs`` is ``N×K`` with rows summing to 1 (±1e-3). The predicted
  class is the arg-max of each row.
- Confusion matrix rows are the true class, columns the predicted class (scikit-learn's layout).
- Per-class metrics are one-vs-rest. A ratio whose denominator is 0 (e.g. precision of a class that is
  never predicted) is undefined → NaN (JSON ``null``), and macro averages are the unweighted mean over
  the classes where the metric is defined; ``notes`` lists what was undefined. F1 is
  2TP/(2TP + FP + FN), so it is 0 — not undefined — for a present class that is never predicted.
- Accuracy has a Clopper–Pearson exact 95 % CI (``scipy.stats.beta``), which never leaves [0, 1] and
  keeps its coverage for small N or accuracy near 0/1, unlike the Wald interval.
- One-vs-rest AUC per class (MONAI's ``compute_roc_auc``, ties counting ½, identical to scikit-learn's
  ``roc_auc_score``) with a DeLong 95 % CI: AUC ± z·√var_DeLong, plain normal, clipped to [0, 1] (as
  pROC does); a perfectly separating class has DeLong variance 0, hence the CI [1, 1]. Needs ≥ 2 cases
  in and ≥ 2 out of the class, else the CI is NaN. A class absent from ``y_true`` (or the only class
  present) has no AUC (NaN, noted).
- Macro AUC = unweighted mean of the defined per-class AUCs (equal to scikit-learn's
  ``roc_auc_score(multi_class="ovr", average="macro")`` when every class is present). Its CI uses the
  DeLong structural components: each case's contribution to the macro AUC is the mean over classes of its
  centred, scaled placement value, and the variance is the sum over true-class strata of the within-
  stratum variance of those contributions (ddof=1). This is deterministic, needs no resampling, accounts
  for the correlation between the one-vs-rest AUCs (same cases), and equals DeLong exactly for K = 2.
  (For K > 2 it treats the class counts as fixed, so it can be slightly narrower than a CI that pools
  each class's "rest" as one sample, as the per-class DeLong CIs do.)
- The predicted class is the first arg-max, so an exact tie goes to the lower class index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from monai.metrics import compute_roc_auc
from scipy import stats
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix

from engine.metrics.common import JsonResult, MetricInputError, is_whole_number
from engine.metrics.statistics import delong_components

__all__ = [
    "PROB_SUM_TOLERANCE", "ClassMetrics", "MacroMetrics", "AucEstimate", "ClassificationReport",
    "confusion_matrix", "class_metrics", "clopper_pearson", "delong_ci", "one_vs_rest_auc",
    "classification_report",
]

#: How far a probability row may sum from 1 (rounding in exported probabilities).
PROB_SUM_TOLERANCE = 1e-3


@dataclass
class ClassMetrics(JsonResult):
    """One-vs-rest counts and rates for one class, plus its AUC with DeLong CI."""

    name: str
    support: int
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    sensitivity: float
    specificity: float
    npv: float
    f1: float
    auc: float = math.nan
    auc_ci_low: float = math.nan
    auc_ci_high: float = math.nan


@dataclass
class MacroMetrics(JsonResult):
    """Unweighted means over classes (each over the classes where the metric is defined)."""

    precision: float
    sensitivity: float
    specificity: float
    npv: float
    f1: float
    auc: float = math.nan
    auc_ci_low: float = math.nan
    auc_ci_high: float = math.nan
    auc_n_classes: int = 0


@dataclass
class AucEstimate(JsonResult):
    """An AUC with its variance and confidence interval (NaN where undefined)."""

    auc: float
    variance: float
    ci_low: float
    ci_high: float


@dataclass
class ClassificationReport(JsonResult):
    """Everything reported for a multi-class classifier on one test set."""

    class_names: list[str]
    n: int
    confusion_matrix: list[list[int]]
    accuracy: float
    accuracy_ci_low: float
    accuracy_ci_high: float
    per_class: list[ClassMetrics]
    macro: MacroMetrics
    ci_level: float = 0.95
    notes: list[str] = field(default_factory=list)


# --- inputs --------------------------------------------------------------------------------------

def _labels(y_true: object, n_classes: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise MetricInputError(f"y_true must be one-dimensional, got shape {y.shape}.")
    if y.size == 0:
        raise MetricInputError("y_true is empty.")
    if (not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y))
            or not np.array_equal(y, np.round(y))):
        raise MetricInputError("y_true must hold integer class indices 0..K-1.")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise MetricInputError(f"y_true values must lie in 0..{n_classes - 1}, found {y.min()}..{y.max()}.")
    return y


def _probabilities(probs: object, n: int, n_classes: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != (n, n_classes):
        raise MetricInputError(f"probs must have shape (N, K) = ({n}, {n_classes}), got {p.shape}.")
    if not np.all(np.isfinite(p)):
        raise MetricInputError("probs contains NaN or infinite values.")
    tol = PROB_SUM_TOLERANCE
    if p.min() < -tol or p.max() > 1 + tol:
        raise MetricInputError(f"probs must lie in [0, 1], found {p.min():.4g}..{p.max():.4g}; "
                               "pass softmax probabilities, not logits.")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > tol)
    if bad.size:
        raise MetricInputError(f"Each row of probs must sum to 1 (±{tol}); row {bad[0]} sums to "
                               f"{sums[bad[0]]:.6g} ({bad.size} rows off). Apply softmax first.")
    return p


# --- building blocks -----------------------------------------------------------------------------

def confusion_matrix(y_true: object, y_pred: object, n_classes: int) -> np.ndarray:
    """K×K counts, rows = true class, columns = predicted class; every class gets a row/column."""
    y = _labels(y_true, n_classes)
    yp = _labels(y_pred, n_classes)
    if len(y) != len(yp):
        raise MetricInputError(f"y_true and y_pred differ in length: {len(y)} vs {len(yp)}.")
    return _sk_confusion_matrix(y, yp, labels=list(range(n_classes))).astype(np.int64)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else math.nan


def class_metrics(cm: object, class_names: Sequence[str] | None = None) -> list[ClassMetrics]:
    """One-vs-rest precision, sensitivity, specificity, NPV and F1 per class from a confusion matrix."""
    m = np.asarray(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise MetricInputError(f"Confusion matrix must be K×K with K ≥ 2, got shape {m.shape}.")
    if np.any(m < 0) or not np.array_equal(m, np.round(m)):
        raise MetricInputError("Confusion matrix must hold non-negative integer counts.")
    k = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise MetricInputError(f"{len(names)} class names for a {k}×{k} confusion matrix.")
    total = int(m.sum())
    out = []
    for c in range(k):
        tp = int(m[c, c])
        fn = int(m[c, :].sum()) - tp
        fp = int(m[:, c].sum()) - tp
        tn = total - tp - fn - fp
        out.append(ClassMetrics(
            name=names[c], support=tp + fn, tp=tp, fp=fp, fn=fn, tn=tn,
            precision=_ratio(tp, tp + fp), sensitivity=_ratio(tp, tp + fn),
            specificity=_ratio(tn, tn + fp), npv=_ratio(tn, tn + fn), f1=_ratio(2 * tp, 2 * tp + fp + fn),
        ))
    return out


def _check_level(level: float) -> float:
    """The confidence level as a float strictly inside (0, 1) — 0.95, not 95."""
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(level) < 1.0:
        raise MetricInputError(f"Confidence level must lie strictly between 0 and 1, got {level!r}.")
    return float(level)


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) CI of a binomial proportion from beta quantiles.

    The lower limit is 0 at ``successes == 0`` and the upper limit 1 at ``successes == n``.
    """
    for value, what in ((successes, "successes"), (n, "n")):
        if not is_whole_number(value):
            raise MetricInputError(f"{what} must be a whole number, got {value!r}.")
    successes, n = int(successes), int(n)
    if n <= 0 or not 0 <= successes <= n:
        raise MetricInputError(f"Need 0 ≤ successes ≤ n and n > 0, got {successes}/{n}.")
    level = _check_level(level)
    alpha = 1.0 - level
    lo = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, n - successes + 1))
    hi = 1.0 if successes == n else float(stats.beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return lo, hi


def delong_ci(auc: float, variance: float, level: float = 0.95) -> tuple[float, float]:
    """Normal CI AUC ± z·√variance, clipped to [0, 1]; NaN when the variance is undefined."""
    level = _check_level(level)
    if not (math.isfinite(auc) and math.isfinite(variance)):
        return math.nan, math.nan
    half = float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt(max(variance, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def one_vs_rest_auc(
    y_true: object, probs: object, level: float = 0.95, class_names: Sequence[str] | None = None,
) -> tuple[list[AucEstimate], AucEstimate, list[str]]:
    """Per-class one-vs-rest AUCs with DeLong CIs, the macro AUC with its CI, and notes on what was undefined.

    See the module docstring for the macro-AUC variance (stratified DeLong structural components).
    """
    p0 = np.asarray(probs)
    if p0.ndim != 2:
        raise MetricInputError(f"probs must be N×K, got shape {p0.shape}.")
    k = p0.shape[1]
    if k < 2:
        raise MetricInputError(f"probs needs at least 2 class columns, got {k}.")
    level = _check_level(level)
    y = _labels(y_true, k)
    p = _probabilities(probs, len(y), k)
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise MetricInputError(f"{len(names)} class names for {k} probability columns.")
    notes: list[str] = []
    per_class: list[AucEstimate] = []
    psi = np.zeros(len(y))  # each case's summed contribution to the macro AUC's deviation
    used = 0
    for c in range(k):
        pos = y == c
        m, n = int(pos.sum()), int((~pos).sum())
        if m == 0 or n == 0:
            why = "absent from y_true" if m == 0 else "the only class in y_true"
            notes.append(f"AUC of class '{names[c]}' is undefined: the class is {why}.")
            per_class.append(AucEstimate(math.nan, math.nan, math.nan, math.nan))
            continue
        auc = float(compute_roc_auc(torch.from_numpy(p[:, c].copy()), torch.from_numpy(pos.astype(np.int64))))
        _, v10, v01 = delong_components(p[None, :, c], pos)  # mean(v10) == auc (tested)
        v10, v01 = v10[0], v01[0]
        if m >= 2 and n >= 2:
            var = float(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)
        else:
            var = math.nan
            notes.append(f"AUC CI of class '{names[c]}' is undefined: DeLong needs ≥ 2 cases in and out "
                         f"of the class (got {m} and {n}).")
        per_class.append(AucEstimate(auc, var, *delong_ci(auc, var, level)))
        psi[pos] += (v10 - auc) / m
        psi[~pos] += (v01 - auc) / n
        used += 1
    if used == 0:
        notes.append("Macro AUC is undefined: no class has both positive and negative cases.")
        return per_class, AucEstimate(math.nan, math.nan, math.nan, math.nan), notes
    macro_auc = float(np.mean([e.auc for e in per_class if math.isfinite(e.auc)]))
    psi /= used
    strata = [psi[y == c] for c in range(k) if np.any(y == c)]
    if any(len(s) < 2 for s in strata):
        notes.append("Macro AUC CI is undefined: a class present in y_true has fewer than 2 cases.")
        macro_var = math.nan
    else:
        macro_var = float(sum(len(s) * np.var(s, ddof=1) for s in strata))
    if used < k:
        notes.append(f"Macro AUC averages the {used} of {k} classes whose AUC is defined.")
    return per_class, AucEstimate(macro_auc, macro_var, *delong_ci(macro_auc, macro_var, level)), notes


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def classification_report(y_true: object, probs: object, class_names: Sequence[str],
                          ci_level: float = 0.95) -> ClassificationReport:
    """Confusion matrix, accuracy (Clopper–Pearson CI), per-class and macro precision, sensitivity,
    specificity, NPV, F1 and one-vs-rest AUC (DeLong CIs) for ``probs`` (N×K) against ``y_true`` (0..K-1)."""
    names = [str(n) for n in class_names]
    k = len(names)
    if k < 2:
        raise MetricInputError(f"Need at least 2 class names, got {names}.")
    if len(set(names)) != k:
        raise MetricInputError(f"Class names must be unique, got {names}.")
    ci_level = _check_level(ci_level)
    y = _labels(y_true, k)
    p = _probabilities(probs, len(y), k)
    y_pred = p.argmax(axis=1)
    cm = confusion_matrix(y, y_pred, k)
    per_class = class_metrics(cm, names)
    aucs, macro_auc, notes = one_vs_rest_auc(y, p, ci_level, names)
    for cls, est in zip(per_class, aucs):
        cls.auc, cls.auc_ci_low, cls.auc_ci_high = est.auc, est.ci_low, est.ci_high

    metric_names = ("precision", "sensitivity", "specificity", "npv", "f1")
    for metric in metric_names:
        undefined = [c.name for c in per_class if not math.isfinite(getattr(c, metric))]
        if undefined:
            notes.append(f"{metric} is undefined (zero denominator) for {undefined}; "
                         "the macro average leaves them out.")
    macro = MacroMetrics(**{mn: _nanmean([getattr(c, mn) for c in per_class]) for mn in metric_names},
                         auc=macro_auc.auc, auc_ci_low=macro_auc.ci_low, auc_ci_high=macro_auc.ci_high,
                         auc_n_classes=sum(math.isfinite(a.auc) for a in aucs))
    n = len(y)
    correct = int(np.trace(cm))
    lo, hi = clopper_pearson(correct, n, ci_level)
    return ClassificationReport(class_names=names, n=n, confusion_matrix=cm.tolist(), accuracy=correct / n,
                                accuracy_ci_low=lo, accuracy_ci_high=hi, per_class=per_class, macro=macro,
                                ci_level=ci_level, notes=notes)

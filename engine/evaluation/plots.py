"""The evaluation report's figures as PNG bytes: one-vs-rest ROC curves and Bland–Altman plots.

matplotlib's Agg canvas is used directly (no pyplot), so the global backend of a host application such
as Slicer is never touched.
"""

from __future__ import annotations

import io
import math

import numpy as np

from engine.evaluation.summary import EvaluationReport
from engine.metrics.common import format_number


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _stage_arrays(report: EvaluationReport) -> tuple[np.ndarray, np.ndarray]:
    names = report.stage_names or []
    y, p = [], []
    for c in report.cases:
        if c.stage_true is None or c.stage_probabilities is None:
            continue
        y.append(names.index(c.stage_true))
        p.append([c.stage_probabilities[n] for n in names])
    return np.asarray(y, dtype=np.int64), np.asarray(p, dtype=np.float64).reshape(len(y), len(names))


def render_roc_png(report: EvaluationReport) -> bytes | None:
    """One-vs-rest ROC curve per stage (AUC in the legend), or None without a classification section."""
    cls = report.classification
    if cls is None:
        return None
    from sklearn.metrics import roc_curve

    y, p = _stage_arrays(report)
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    drawn = 0
    for k, c in enumerate(cls.per_class):
        pos = y == k
        if not pos.any() or pos.all():
            continue
        fpr, tpr, _ = roc_curve(pos.astype(int), p[:, k])
        # Varying line style and width keeps identical curves (e.g. two perfect stages) both visible.
        ax.plot(fpr, tpr, linewidth=3.0 - 0.6 * (drawn % 3), linestyle=("-", "--", "-.", ":")[drawn % 4],
                label=f"{c.name} (AUC {format_number(c.auc)})")
        drawn += 1
    if drawn == 0:
        ax.text(0.5, 0.5, "no stage has both positive and negative cases", ha="center", va="center")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title(f"One-vs-rest ROC (macro AUC {format_number(cls.macro.auc)}, n = {cls.n})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def render_bland_altman_png(report: EvaluationReport) -> bytes | None:
    """One Bland–Altman panel per structure with computed agreement, or None when there is none."""
    panels = [v for v in report.volume_agreement if v.bland_altman is not None]
    if not panels:
        return None
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(4.8 * len(panels), 4.2)
    for i, va in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        pred = np.array([c.structures[va.name].pred_volume_cm3 for c in report.cases])
        ref = np.array([c.structures[va.name].ref_volume_cm3 for c in report.cases])
        ba = va.bland_altman
        ax.scatter((pred + ref) / 2.0, pred - ref, s=24, color="tab:blue", zorder=3)
        ax.axhline(ba.mean_difference, color="tab:red", linewidth=1.5,
                   label=f"mean {ba.mean_difference:+.3g}")
        for limit, text in ((ba.upper_limit, "+1.96 SD"), (ba.lower_limit, "−1.96 SD")):
            ax.axhline(limit, color="tab:gray", linestyle="--", linewidth=1.2,
                       label=f"{text} {limit:+.3g}" if math.isfinite(limit) else text)
        ax.axhline(0.0, color="0.8", linewidth=0.8, zorder=1)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel("Mean of predicted and reference volume (cm³)")
        ax.set_ylabel("Predicted − reference (cm³)")
        ax.set_title(f"{va.name} (n = {va.n})")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _png(fig)

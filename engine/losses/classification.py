"""Stage focal loss (nn-TransEC Eq. 4): γ2 = 2 and per-stage weights α2 from the plan."""

from __future__ import annotations

from typing import Sequence

from monai.losses import FocalLoss

STAGE_FOCAL_GAMMA = 2.0


def stage_focal_loss(alpha: Sequence[float] | None, gamma: float = STAGE_FOCAL_GAMMA) -> FocalLoss:
    """Softmax focal loss on (B, stages) logits with (B, 1) integer targets; ``alpha`` one weight per stage."""
    return FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma,
                     alpha=list(alpha) if alpha is not None else None)

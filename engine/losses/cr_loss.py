"""Losses of the GTV networks: HCF/SANet's Combined Regularization (CR) loss and ResFormer's loss.

CR loss (HCF/SANet Eq. 4–8) = Dice + (1 − α)·CE + α·ε, α = 0.1, where
ε = (1/K) Σ_k (1/N) Σ_i −log p_i^k is the cross-entropy to the uniform distribution: it penalises
predictions that move far from uniform, counteracting the network's preference for the background
class when the GTV covers < 0.1 % of the pixels. CE is the standard (mean over pixels) cross-entropy,
as the paper's text says; its Eq. 7 writes an extra 1/K which we read as notation (with it, ε would
weigh K times more). With standard CE, (1 − α)·CE + α·ε is exactly label-smoothed cross-entropy.
The Dice term (Eq. 5) averages the soft Dice over all K classes, background included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CR_ALPHA = 0.1
DICE_SMOOTH = 1e-5


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, include_background: bool = True,
                   batch: bool = True, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """1 − mean over classes of 2Σpq / (Σp + Σq) on softmax probabilities.

    ``batch=True`` sums over the whole batch before dividing (stable when many slices hold no GTV);
    ``False`` averages per-image Dice. ``target`` is ``(N, H, W)`` (or ``(N, 1, H, W)``) class indices.
    """
    target = _class_indices(target)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = (0, *range(2, logits.ndim)) if batch else tuple(range(2, logits.ndim))
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * intersection + smooth) / (denominator + smooth)).mean()


def uniform_regulariser(logits: torch.Tensor) -> torch.Tensor:
    """ε of HCF/SANet Eq. 8: the mean of −log p over classes and pixels (log K for a uniform p)."""
    return -torch.log_softmax(logits, dim=1).mean()


def _class_indices(target: torch.Tensor) -> torch.Tensor:
    if target.ndim >= 4 and target.shape[1] == 1:
        target = target[:, 0]
    return target.long()


class CRLoss(nn.Module):
    """Dice + (1 − α)·CE + α·ε on logits ``(N, C, H, W)`` and integer targets ``(N, H, W)``.

    ``regulariser=False`` gives the ablation Dice + CE (as does ``alpha=0``).
    """

    def __init__(self, alpha: float = CR_ALPHA, regulariser: bool = True, batch_dice: bool = True):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.alpha = float(alpha) if regulariser else 0.0
        self.batch_dice = batch_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _class_indices(target)
        loss = soft_dice_loss(logits, target, batch=self.batch_dice)
        loss = loss + (1 - self.alpha) * F.cross_entropy(logits, target)
        if self.alpha:
            loss = loss + self.alpha * uniform_regulariser(logits)
        return loss


class ResFormerLoss(nn.Module):
    """ResFormer's multi-task loss: ``ce_weight``·weighted CE(classification) + Dice(segmentation).

    ``forward((segmentation_logits, classification_logits), seg_target, cls_target)`` takes the
    network's output tuple as it is. ``class_weights`` (one per image class) weight the CE, e.g.
    inverse class frequencies; the Dice covers all segmentation classes.
    """

    def __init__(self, ce_weight: float = 0.25, class_weights: Sequence[float] | None = None):
        super().__init__()
        self.ce_weight = float(ce_weight)
        weights = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], seg_target: torch.Tensor,
                cls_target: torch.Tensor) -> torch.Tensor:
        seg_logits, cls_logits = outputs
        weights = self.class_weights.to(cls_logits.dtype) if self.class_weights is not None else None
        ce = F.cross_entropy(cls_logits, cls_target.long(), weight=weights)
        return self.ce_weight * ce + soft_dice_loss(seg_logits, seg_target)

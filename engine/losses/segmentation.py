"""Deep-supervised segmentation losses (nn-TransEC Eq. 1).

The paper's loss is the multi-class focal loss (α1 = 0.25, γ1 = 2) averaged over the four
deep-supervision outputs. ``"focal+dice"`` adds MONAI's soft Dice over the foreground classes, the
term nnU-Net (on which nn-TransEC builds) always uses: with small tumours and a short training
budget, focal alone down-weights the rare foreground (α1 = 0.25 gives background 0.75) and learns
them slowly. ``"focal"`` reproduces the paper exactly.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss
from torch import nn

SEGMENTATION_LOSSES = ("focal", "focal+dice")
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


class FocalDiceLoss(nn.Module):
    def __init__(self, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA, dice: bool = True):
        super().__init__()
        self.focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma, alpha=alpha)
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=True,
                             smooth_nr=1e-5, smooth_dr=1e-5) if dice else None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.focal(logits, target)
        if self.dice is not None:
            loss = loss + self.dice(logits, target)
        return loss


def segmentation_loss(kind: str = "focal+dice") -> FocalDiceLoss:
    if kind not in SEGMENTATION_LOSSES:
        raise ValueError(f"Unknown segmentation loss '{kind}'; choose one of {', '.join(SEGMENTATION_LOSSES)}.")
    return FocalDiceLoss(dice=kind == "focal+dice")


class DeepSupervisionLoss(nn.Module):
    """Mean of ``loss`` over the deep-supervision outputs (finest first), the target downsampled to
    each output's size by nearest neighbour. ``weights`` default to equal (the paper divides by 4)."""

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None):
        super().__init__()
        self.loss = loss
        self.weights = list(weights) if weights is not None else None

    def forward(self, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        weights = self.weights[: len(outputs)] if self.weights else [1.0] * len(outputs)
        total = outputs[0].new_zeros(())
        for w, out in zip(weights, outputs):
            t = target if out.shape[2:] == target.shape[2:] else \
                F.interpolate(target.float(), size=out.shape[2:], mode="nearest").long()
            total = total + w * self.loss(out, t)
        return total / float(sum(weights))

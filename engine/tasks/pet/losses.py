"""The paper's global loss: α·MSE(reconstruction) + β·Dice(segmentation) + ω·CE(pathology) + λ·BCE(outcome).

Each term is returned separately so training can log it and tests can check it alone. A head the
network lacks (an ablation) contributes nothing; a case without a known pathology or outcome (label
-1) is left out of that term, so random crops without the tumour still train the decoders.

The Dice is computed over the whole batch: on a crop without tumour a per-crop Dice loss jumps to its
maximum as soon as anything is predicted there and its gradient then vanishes, so false positives away
from the tumour are not trained away; over the batch they enlarge the denominator and keep counting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.losses import DiceLoss
from torch import nn

from engine.tasks.pet.networks import PetOutputs


@dataclass(frozen=True)
class LossWeights:
    """α (reconstruction), β (segmentation), ω (pathology), λ (outcome); the paper: α = β, best λ = 0.3."""

    reconstruction: float = 1.0
    segmentation: float = 1.0
    pathology: float = 1.0
    outcome: float = 0.3


class MultiTaskLoss(nn.Module):
    """Weighted sum of the four task losses; :meth:`terms` gives each unweighted term."""

    def __init__(self, weights: LossWeights):
        super().__init__()
        self.weights = weights
        self.dice = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=True)

    def terms(self, out: PetOutputs, image: torch.Tensor, label: torch.Tensor, pathology: torch.Tensor,
              outcome: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted losses of the heads the network has (``label`` (B,1,...) in {0,1}; targets -1 = unknown)."""
        terms: dict[str, torch.Tensor] = {}
        if out.reconstruction is not None:
            terms["reconstruction"] = nn.functional.mse_loss(out.reconstruction.float(), image.float())
        if out.segmentation_logits is not None:
            terms["segmentation"] = self.dice(out.segmentation_logits.float(), label.float())
        known = pathology >= 0
        if out.pathology_logits is not None and bool(known.any()):
            terms["pathology"] = nn.functional.cross_entropy(out.pathology_logits[known].float(), pathology[known])
        known = outcome >= 0
        if bool(known.any()):
            terms["outcome"] = nn.functional.binary_cross_entropy_with_logits(
                out.outcome_logit[known].float(), outcome[known].float())
        return terms

    def forward(self, out: PetOutputs, image: torch.Tensor, label: torch.Tensor, pathology: torch.Tensor,
                outcome: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        terms = self.terms(out, image, label, pathology, outcome)
        total = sum((getattr(self.weights, k) * v for k, v in terms.items()),
                    start=out.outcome_logit.sum() * 0.0)
        return total, {k: float(v.detach()) for k, v in terms.items()}

"""HCF/SANet's CR loss and ResFormer's loss on tiny hand-computed inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.losses import CRLoss, ResFormerLoss
from engine.losses.cr_loss import soft_dice_loss, uniform_regulariser

# 1 image, 2×2 pixels: two background, two GTV.
TARGET = torch.tensor([[[0, 1], [1, 0]]])


def _confident(target: torch.Tensor, classes: int = 2, margin: float = 20.0) -> torch.Tensor:
    return F.one_hot(target, classes).movedim(-1, 1).float() * 2 * margin - margin


def test_perfect_prediction_has_no_dice_or_ce_but_a_regulariser():
    logits = _confident(TARGET)  # ±20: p(true) ≈ 1, log p(wrong) ≈ −40
    assert soft_dice_loss(logits, TARGET).item() == pytest.approx(0.0, abs=1e-6)
    assert F.cross_entropy(logits, TARGET).item() == pytest.approx(0.0, abs=1e-6)
    # ε = mean over classes and pixels of −log p = (0 + 40) / 2: a confident network is penalised.
    assert uniform_regulariser(logits).item() == pytest.approx(20.0, abs=1e-4)
    assert CRLoss(alpha=0.1)(logits, TARGET).item() == pytest.approx(0.1 * 20.0, abs=1e-4)


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_uniform_prediction_regulariser_is_log_k(classes: int):
    logits = torch.zeros(1, classes, 2, 2)
    assert uniform_regulariser(logits).item() == pytest.approx(math.log(classes), abs=1e-6)


def test_uniform_prediction_total_by_hand():
    # p = 1/2 everywhere. Dice per class: 2·(2·½) / (2 + 2) = ½ → loss ½; CE = ε = log 2.
    logits = torch.zeros(1, 2, 2, 2)
    assert soft_dice_loss(logits, TARGET).item() == pytest.approx(0.5, abs=1e-5)
    expected = 0.5 + 0.9 * math.log(2) + 0.1 * math.log(2)
    assert CRLoss()(logits, TARGET).item() == pytest.approx(expected, abs=1e-5)


def test_alpha_zero_and_no_regulariser_equal_dice_plus_ce():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    dice_ce = soft_dice_loss(logits, target) + F.cross_entropy(logits, target)
    assert torch.allclose(CRLoss(alpha=0.0)(logits, target), dice_ce)
    assert torch.allclose(CRLoss(alpha=0.1, regulariser=False)(logits, target), dice_ce)


def test_regularised_ce_is_label_smoothing_and_accepts_channel_targets():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 2, 6, 6), torch.randint(0, 2, (2, 6, 6))
    cr = CRLoss(alpha=0.1)(logits, target) - soft_dice_loss(logits, target)
    assert torch.allclose(cr, F.cross_entropy(logits, target, label_smoothing=0.1), atol=1e-6)
    assert torch.allclose(CRLoss()(logits, target[:, None]), CRLoss()(logits, target))
    with pytest.raises(ValueError):
        CRLoss(alpha=1.5)


def test_resformer_loss_is_quarter_weighted_ce_plus_dice():
    seg = _confident(TARGET)
    cls = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([1, 1])
    weights = [1.0, 3.0]
    expected = 0.25 * F.cross_entropy(cls, labels, weight=torch.tensor(weights))
    got = ResFormerLoss(ce_weight=0.25, class_weights=weights)((seg, cls), TARGET, labels)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)  # perfect segmentation: Dice ≈ 0
    plain = ResFormerLoss()((torch.zeros(1, 2, 2, 2), cls[:1]), TARGET, labels[:1])
    assert plain.item() == pytest.approx(0.25 * F.cross_entropy(cls[:1], labels[:1]).item() + 0.5, abs=1e-5)

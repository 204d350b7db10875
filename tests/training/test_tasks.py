"""ClassificationTask validation: probabilities, targets and the mirrored validation of the predictor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from engine.training.tasks import ClassificationTask


class TopLeftScorer(nn.Module):
    """Scores the top-left in-plane voxel of the first slice against 0: mirroring changes its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, 0, 0, 0]
        return torch.stack([v, torch.zeros_like(v)], dim=1)


def _batch() -> dict:
    # two cases, (1, 1, 2, 2) images [[a, c], [d, b]] in (y, x)
    images = torch.tensor([[[2.0, 0.5], [3.0, -1.0]], [[-2.0, 0.0], [0.0, 0.0]]]).reshape(2, 1, 1, 2, 2)
    return {"image": images, "target": torch.tensor([0, 1]), "case_id": ["a", "b"]}


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


class ColumnTargetCrossEntropy(nn.Module):
    """Cross-entropy on (N, 1) targets, the shape the stage focal loss takes."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target[:, 0])


def _task(mirror_axes=()) -> ClassificationTask:
    return ClassificationTask(ColumnTargetCrossEntropy(), lambda model, batch: model(batch["image"]), 2,
                              mirror_axes=mirror_axes)


def test_validation_probabilities_are_the_plain_softmax_by_default():
    out = _task().validation_step(TopLeftScorer(), _batch(), torch.device("cpu"))
    assert out["target"] == [0, 1]
    assert out["probs"][0][0] == pytest.approx(_sigmoid(2.0)) and out["probs"][1][0] == pytest.approx(_sigmoid(-2.0))


def test_mirrored_validation_averages_the_four_in_plane_mirrorings_and_keeps_the_loss():
    model, batch = TopLeftScorer(), _batch()
    plain = _task().validation_step(model, batch, torch.device("cpu"))
    mirrored = _task((1, 2)).validation_step(model, batch, torch.device("cpu"))
    # each mirroring brings another corner to the top left: a, d (y), c (x), b (both)
    assert mirrored["probs"][0][0] == pytest.approx(np.mean([_sigmoid(v) for v in (2.0, 0.5, 3.0, -1.0)]))
    assert mirrored["probs"][1][0] == pytest.approx(np.mean([_sigmoid(v) for v in (-2.0, 0.0, 0.0, 0.0)]))
    assert mirrored["loss"] == pytest.approx(plain["loss"])
    metrics = _task((1, 2)).validation_epoch_end([mirrored])
    assert metrics["accuracy"] == 1.0 and metrics["auc"] == 1.0


def test_mirrored_validation_runs_each_mirroring_once():
    class Counting(TopLeftScorer):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Counting.calls += 1
            return super().forward(x)

    _task((1, 2)).validation_step(Counting(), _batch(), torch.device("cpu"))
    assert Counting.calls == 4  # the loss's forward is the unmirrored term

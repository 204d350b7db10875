"""Test-time mirroring of a classifier, against probabilities computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from engine.inference.tta import mirror_subsets, mirrored_class_probabilities


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_mirror_subsets_lists_every_combination_unmirrored_first():
    assert mirror_subsets(()) == [()]
    assert mirror_subsets((1, 2)) == [(), (1,), (2,), (1, 2)]
    assert mirror_subsets((2, 1, 2)) == [(), (2,), (1,), (2, 1)]     # duplicates dropped
    assert len(mirror_subsets((0, 1, 2))) == 8


def test_probabilities_are_the_mean_over_the_four_in_plane_mirrorings():
    # one 1×2×2 image (z, y, x) = [[a, c], [d, b]]; the "network" scores its top-left voxel against 0,
    # so each mirroring brings a different corner to the top left: none → a, y → d, x → c, both → b.
    a, b, c, d = 2.0, -1.0, 0.5, 3.0
    image = torch.tensor([[a, c], [d, b]]).reshape(1, 1, 1, 2, 2)

    def forward(x: torch.Tensor) -> torch.Tensor:
        top_left = x[:, 0, 0, 0, 0]
        return torch.stack([top_left, torch.zeros_like(top_left)], dim=1)

    p = mirrored_class_probabilities(forward, (image,), (1, 2))
    expected = sum(_sigmoid(v) for v in (a, b, c, d)) / 4
    assert p.shape == (1, 2)
    assert float(p[0, 0]) == pytest.approx(expected) and float(p.sum()) == pytest.approx(1.0)
    plain = mirrored_class_probabilities(forward, (image,), ())
    assert float(plain[0, 0]) == pytest.approx(_sigmoid(a))


def test_every_input_is_mirrored_alike_and_none_passes_through():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 3, 4, 5)
    seen = []

    def forward(ct: torch.Tensor, same: torch.Tensor, nothing: None) -> torch.Tensor:
        assert nothing is None and torch.equal(ct, same)
        seen.append(ct.clone())
        return torch.zeros(ct.shape[0], 3)

    p = mirrored_class_probabilities(forward, (x, x.clone(), None), (1, 2))
    assert torch.allclose(p, torch.full((2, 3), 1 / 3))
    assert len(seen) == 4 and torch.equal(seen[0], x) and torch.equal(seen[3], torch.flip(x, (3, 4)))
    assert not any(torch.equal(s, torch.flip(x, (2,))) for s in seen)   # z (cranio-caudal) never mirrored


def test_given_plain_logits_replace_the_unmirrored_pass():
    a, b, c, d = 2.0, -1.0, 0.5, 3.0
    image = torch.tensor([[a, c], [d, b]]).reshape(1, 1, 1, 2, 2)
    calls = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(x)
        top_left = x[:, 0, 0, 0, 0]
        return torch.stack([top_left, torch.zeros_like(top_left)], dim=1)

    plain = forward(image)
    calls.clear()
    p = mirrored_class_probabilities(forward, (image,), (1, 2), plain_logits=plain)
    assert len(calls) == 3 and not any(torch.equal(x, image) for x in calls)
    assert float(p[0, 0]) == pytest.approx(sum(_sigmoid(v) for v in (a, b, c, d)) / 4)
    # the given logits are what the unmirrored term uses (here deliberately not forward(image))
    p = mirrored_class_probabilities(forward, (image,), (1, 2), plain_logits=torch.tensor([[0.0, 0.0]]))
    assert float(p[0, 0]) == pytest.approx((0.5 + sum(_sigmoid(v) for v in (b, c, d))) / 4)

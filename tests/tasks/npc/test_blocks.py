"""The paper's blocks: relative-position attention, the Bottleneck Transformer's replacement of the
3×3×3 convolution, the feature-fusion-aware module, the learned loss weights and the Jaccard + focal loss."""

from __future__ import annotations

import math

import pytest
import torch

from engine.tasks.npc.blocks import (
    BottleneckAttention,
    FeatureFusionAttention,
    JaccardFocalLoss,
    LearnedLossWeights,
    RelativeSelfAttention3d,
    relative_index,
)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_relative_index_pairs_offsets():
    index = relative_index((2, 3, 1))
    assert index.shape == (3, 6, 6)
    # token 0 is (0, 0, 0), token 5 is (1, 2, 0): offsets (1, 2, 0) shifted by L - 1 = (1, 2, 0)
    assert index[:, 0, 5].tolist() == [2, 4, 0]
    assert index[:, 5, 0].tolist() == [0, 0, 0]


def test_attention_keeps_the_shape_and_splits_heads():
    attention = RelativeSelfAttention3d(16, 4, (3, 5, 5))
    x = torch.randn(2, 16, 3, 5, 5)
    assert attention(x).shape == x.shape
    assert attention(torch.randn(1, 16, 2, 4, 3)).shape == (1, 16, 2, 4, 3)  # smaller maps use the table centre
    with pytest.raises(ValueError, match="larger than the attention"):
        attention(torch.randn(1, 16, 4, 5, 5))
    with pytest.raises(ValueError, match="attention heads"):
        RelativeSelfAttention3d(10, 4, (2, 2, 2))


def _logits(attention: RelativeSelfAttention3d, x: torch.Tensor) -> torch.Tensor:
    b, _, *size = x.shape
    q, k, _ = attention.qkv(x).reshape(b, 3, attention.heads, attention.head_channels, -1).transpose(-1, -2).unbind(1)
    return attention.attention_logits(q, k, size)


def test_attention_logits_are_equivariant_to_a_shift():
    """Content placed elsewhere in the grid meets the same logits: only offsets between voxels count."""
    attention = RelativeSelfAttention3d(8, 2, (4, 6, 6))
    content = torch.randn(1, 8, 2, 3, 3)
    first, shifted = torch.zeros(1, 8, 4, 6, 6), torch.zeros(1, 8, 4, 6, 6)
    first[..., 0:2, 0:3, 1:4] = content
    shifted[..., 2:4, 3:6, 2:5] = content

    def tokens(z0: int, y0: int, x0: int) -> list[int]:
        return [(z0 + z) * 36 + (y0 + y) * 6 + (x0 + x) for z in range(2) for y in range(3) for x in range(3)]

    a, b = tokens(0, 0, 1), tokens(2, 3, 2)
    la, lb = _logits(attention, first), _logits(attention, shifted)
    torch.testing.assert_close(la[..., a, :][..., a], lb[..., b, :][..., b])
    # the position term is not zero: the same pair of voxels at another offset scores differently
    assert not torch.allclose(la[..., a[0], a[1]], la[..., a[0], a[3]])


def test_bottleneck_attention_pools_where_the_convolution_had_stride_two():
    block = BottleneckAttention(8, 4, (3, 7, 7), stride=2)
    assert block(torch.randn(1, 8, 3, 7, 7)).shape == (1, 8, 2, 4, 4)  # ceil, as the strided shortcut
    assert BottleneckAttention(8, 4, (2, 4, 4), stride=1)(torch.randn(1, 8, 2, 4, 4)).shape == (1, 8, 2, 4, 4)
    assert BottleneckAttention(8, 4, (1, 2, 2), stride=2)(torch.randn(1, 8, 1, 2, 2)).shape == (1, 8, 1, 1, 1)


def test_feature_fusion_joins_segmentation_features_on_the_staging_grid():
    ffa = FeatureFusionAttention(32, (16, 8), 24, 4, (1, 2, 2)).eval()
    stage = torch.randn(2, 32, 1, 2, 2)
    deep, decoder = torch.randn(2, 16, 2, 4, 4), torch.randn(2, 8, 4, 8, 8)
    out = ffa(stage, [deep, decoder])
    assert out.shape == (2, 24, 1, 2, 2) and bool((out >= 0).all())
    changed = ffa(stage, [deep + 1.0, decoder])
    assert not torch.allclose(out, changed)  # the segmentation features reach the output


def test_learned_weights_start_at_one_stay_positive_and_move():
    weights = LearnedLossWeights(("seg", "cls"))
    assert weights.weights == {"seg": 1.0, "cls": 1.0}
    optimizer = torch.optim.Adam(weights.parameters(), lr=0.1)
    for _ in range(50):  # a large segmentation loss and a small classification loss
        optimizer.zero_grad()
        weights([torch.tensor(4.0), torch.tensor(0.25)]).backward()
        optimizer.step()
    lam = weights.weights
    assert all(v > 0 for v in lam.values())
    assert lam["seg"] < 0.7 and lam["cls"] > 1.5  # towards 1/L: 0.25 and 4
    # the uncertainty term makes λ = 1/L the minimum: L·λ - log λ at λ = 1/L beats λ → 0
    loss = lambda lam_, task_loss: task_loss * lam_ - math.log(lam_)
    assert loss(1 / 4.0, 4.0) < loss(1e-3, 4.0)


def test_fixed_weights_stay_one_and_sum_the_losses():
    weights = LearnedLossWeights(("seg", "cls"), learn=False)
    total = weights([torch.tensor(2.0), torch.tensor(3.0)])
    assert float(total) == 5.0 and not weights.log_variances.requires_grad


def test_jaccard_focal_on_known_values():
    """Two voxels, logits 0 (p = 0.5) and ln 3 (p = 0.75), target (0, 1), computed by hand."""
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 1, 2)
    target = torch.tensor([0.0, 1.0]).view(1, 1, 1, 1, 2)
    p = torch.tensor([0.5, 0.75])
    intersection, union = 0.75, float(p.sum()) + 1.0 - 0.75
    jaccard = 1.0 - intersection / union  # 1 - 0.75 / 1.5 = 0.5
    # focal (γ = 2): -(1 - p_t)² log p_t; p_t = 0.5 for the background voxel, 0.75 for the tumour voxel
    focal = (0.25 * math.log(2.0) + 0.0625 * -math.log(0.75)) / 2.0
    value = float(JaccardFocalLoss()(logits, target))
    assert value == pytest.approx(jaccard + focal, abs=1e-4)
    assert jaccard == pytest.approx(0.5)
    perfect = float(JaccardFocalLoss()(torch.tensor([-20.0, 20.0]).view(1, 1, 1, 1, 2), target))
    assert perfect < 1e-4

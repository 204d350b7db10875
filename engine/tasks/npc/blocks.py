"""The paper's own blocks: 3D multi-head self-attention with relative position encoding (the
Bottleneck Transformer's replacement of the 3×3×3 convolution), the feature-fusion-aware module, the
learned task weights and the Jaccard + focal segmentation loss.

Everything generic (convolutions, normalisation, the ResNet-50 and U-Net scaffolding, Dice/focal
maths) comes from PyTorch and MONAI; only what the paper adds is written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceLoss, FocalLoss
from torch import nn


def relative_index(size: Sequence[int]) -> torch.Tensor:
    """(axes, N, N) index of ``p_j - p_i + L - 1`` along each axis for the N = ∏size voxels of a grid,
    i.e. which row of an axis's relative-position table pairs token i with token j."""
    grids = torch.meshgrid(*[torch.arange(n) for n in size], indexing="ij")
    coords = torch.stack([g.reshape(-1) for g in grids])  # (axes, N)
    return (coords[:, None, :] - coords[:, :, None]) + torch.tensor(list(size))[:, None, None] - 1


class RelativeSelfAttention3d(nn.Module):
    """Multi-head self-attention over the voxels of a 3D feature map, logits q·kᵀ + q·rᵀ.

    ``r`` is a learned embedding of the relative offset (p_j - p_i), one table per axis summed (the
    Bottleneck Transformer's factorised relative position encoding), so attention depends on where
    two voxels are relative to each other, never on where they are in the volume. ``size`` is the
    largest feature map the module will see; smaller maps use the centre of each table.
    """

    def __init__(self, channels: int, heads: int, size: Sequence[int]):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels cannot be split into {heads} attention heads")
        self.heads, self.head_channels = heads, channels // heads
        self.size = tuple(int(n) for n in size)
        self.qkv = nn.Conv3d(channels, 3 * channels, kernel_size=1, bias=False)
        self.relative = nn.ParameterList(
            [nn.Parameter(torch.randn(2 * n - 1, self.head_channels) * self.head_channels ** -0.5)
             for n in self.size])

    def _tables(self, size: Sequence[int]) -> list[torch.Tensor]:
        if any(n > m for n, m in zip(size, self.size)):
            raise ValueError(f"feature map {tuple(size)} is larger than the attention was built for {self.size}; "
                             "the network's input is larger than its patch size")
        return [table[m - n: m + n - 1] for table, n, m in zip(self.relative, size, self.size)]

    def attention_logits(self, q: torch.Tensor, k: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """(B, heads, N, N) logits of queries/keys shaped (B, heads, N, d): content plus position term."""
        logits = q @ k.transpose(-1, -2)
        index = relative_index(size).to(q.device)
        for axis, table in enumerate(self._tables(size)):
            by_offset = q @ table.t()  # (B, heads, N, 2L-1): each query against every offset
            logits = logits + torch.gather(by_offset, -1, index[axis].expand(*q.shape[:2], -1, -1))
        return logits * self.head_channels ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *size = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, self.head_channels, -1).transpose(-1, -2).unbind(1)
        weights = torch.softmax(self.attention_logits(q, k, size).float(), dim=-1).to(v.dtype)
        out = (weights @ v).transpose(-1, -2).reshape(b, c, *size)
        return out


class BottleneckAttention(nn.Module):
    """What replaces the 3×3×3 convolution of a ResNet-50 bottleneck block in the Bottleneck Transformer:
    relative-position self-attention, then 2× average pooling where the convolution had stride 2 (sizes
    rounded up, as the strided shortcut's; an axis already 1 voxel wide stays so)."""

    def __init__(self, channels: int, heads: int, size: Sequence[int], stride: int):
        super().__init__()
        self.attention = RelativeSelfAttention3d(channels, heads, size)
        kernel = tuple(2 if n > 1 else 1 for n in size)
        self.pool = nn.AvgPool3d(kernel, kernel, ceil_mode=True) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.attention(x))


class FeatureFusionAttention(nn.Module):
    """The feature-fusion-aware module: the deepest segmentation features (last encoder unit and first
    decoder unit), brought to the staging features' grid, are concatenated with them, mixed by a
    convolution and related across the volume by 4-head self-attention with a position term
    (q·pᵀ + q·kᵀ); pooled, they are what the stage classifier reads."""

    def __init__(self, stage_channels: int, segmentation_channels: Sequence[int], out_channels: int,
                 heads: int, size: Sequence[int]):
        super().__init__()
        self.mix = nn.Sequential(
            nn.Conv3d(stage_channels + sum(segmentation_channels), out_channels, kernel_size=3, padding=1,
                      bias=False),
            nn.GroupNorm(8, out_channels), nn.ReLU(inplace=True))
        self.attention = RelativeSelfAttention3d(out_channels, heads, size)
        self.norm = nn.GroupNorm(8, out_channels)
        self.out_channels = out_channels

    def forward(self, stage: torch.Tensor, segmentation: Sequence[torch.Tensor]) -> torch.Tensor:
        size = stage.shape[2:]
        resized = [nn.functional.adaptive_avg_pool3d(f, size) for f in segmentation]
        mixed = self.mix(torch.cat([stage, *resized], dim=1))
        return torch.relu(self.norm(mixed + self.attention(mixed)))


class LearnedLossWeights(nn.Module):
    """L = Σ_t λ_t·L_t + s_t with λ_t = exp(−s_t) (homoscedastic-uncertainty weighting, Kendall et al.).

    Every λ starts at 1 and stays positive; the ``+ s_t`` term makes λ → 0 cost more than it saves,
    so no task can switch itself off (the optimum is λ_t = 1/L_t). ``learn=False`` keeps λ = 1.
    """

    def __init__(self, tasks: Sequence[str], learn: bool = True):
        super().__init__()
        self.tasks = tuple(tasks)
        self.log_variances = nn.Parameter(torch.zeros(len(self.tasks)), requires_grad=learn)
        self.learn = learn

    @property
    def weights(self) -> dict[str, float]:
        return {t: float(torch.exp(-s)) for t, s in zip(self.tasks, self.log_variances.detach())}

    def forward(self, losses: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(losses) != len(self.tasks):
            raise ValueError(f"expected {len(self.tasks)} losses ({', '.join(self.tasks)}), got {len(losses)}")
        s = self.log_variances
        total = sum(torch.exp(-s[i]) * loss for i, loss in enumerate(losses))
        return total + s.sum() if self.learn else total


class JaccardFocalLoss(nn.Module):
    """Soft Jaccard loss plus sigmoid focal loss (γ = 2) of one-channel segmentation logits."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.jaccard = DiceLoss(sigmoid=True, jaccard=True, smooth_nr=1e-5, smooth_dr=1e-5)
        self.focal = FocalLoss(gamma=gamma, use_softmax=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype)
        return self.jaccard(logits, target) + self.focal(logits, target)

"""HCF/SANet: the two networks of the Heterogeneous Cascade Framework for GTV segmentation (2D).

Stage 1, :class:`SliceClassifier` (ResNet-18), decides whether a CT slice contains GTV; stage 2,
:class:`SANet`, segments only the slices it keeps, so normal slices next to the tumour cannot produce
false positives. SANet is a feature pyramid on a ResNet-18 whose last stage is dilated (stride 1,
dilation 2: the deepest features stay at 1/16 instead of 1/32), a pyramid pooling module (PPM) on the
deepest features, and a decoder of three Spatial Alignment Modules (SAM) that upsample with a learnt
sampling grid instead of fixed bilinear interpolation, to undo misalignment caused by downsampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.resnet2d import RESNET18_LAYERS, ResNetEncoder2d, init_weights


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1) -> nn.Sequential:
    """Conv-BN-ReLU ("CBR" in the paper's figure), padding keeping the size."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU())


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: context pooled on ``bins``×``bins`` grids, each reduced by 1×1 Conv-BN
    to ``in_ch // len(bins)`` channels, upsampled, concatenated with the input and fused by a 3×3
    Conv-BN-ReLU to ``out_ch``. Training needs a batch above 1 (BatchNorm on the 1×1 bin)."""

    def __init__(self, in_ch: int, out_ch: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        reduced = max(1, in_ch // len(self.bins))
        self.paths = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_ch, reduced, 1, bias=False), nn.BatchNorm2d(reduced))
            for b in self.bins)
        self.fuse = conv_bn_relu(in_ch + reduced * len(self.bins), out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_upsample(path(x), x.shape[2:]) for path in self.paths]
        return self.fuse(torch.cat([x, *pooled], dim=1))


class SpatialAlignment(nn.Module):
    """SAM: upsample the low-resolution map ``low`` onto the grid of ``high`` by sampling it at the
    identity grid plus a learnt offset Δ (Eq. 1–3 of HCF/SANet).

    Δ = conv3×3(cat(conv1×1(high), conv1×1(bilinear(low)))), both 1×1 convs to ``out_ch // 2``;
    Δ is in pixels of the high-resolution grid (channel 0: x, channel 1: y). ``low`` is projected to
    ``out_ch`` by a 1×1 conv when ``low_ch != out_ch``. ``last_offset`` keeps the last Δ (detached)
    for inspection.
    """

    def __init__(self, low_ch: int, high_ch: int, out_ch: int):
        super().__init__()
        mid = max(1, out_ch // 2)
        self.down_low = nn.Conv2d(low_ch, mid, 1, bias=False)
        self.down_high = nn.Conv2d(high_ch, mid, 1, bias=False)
        self.offset = nn.Conv2d(2 * mid, 2, 3, padding=1)
        self.project: nn.Module = nn.Identity() if low_ch == out_ch else nn.Conv2d(low_ch, out_ch, 1, bias=False)
        self.last_offset: torch.Tensor | None = None

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        size = high.shape[2:]
        low_up = _upsample(self.down_low(low), size)
        delta = self.offset(torch.cat([self.down_high(high), low_up], dim=1))
        self.last_offset = delta.detach()
        return self.sample(self.project(low), delta)

    @staticmethod
    def sample(low: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``grid_sample`` of ``low`` at the identity grid of ``delta``'s size shifted by ``delta``
        (pixels); Δ = 0 is exactly bilinear upsampling (align_corners=False)."""
        n, _, h, w = delta.shape
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=delta.device, dtype=delta.dtype)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=delta.device, dtype=delta.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        identity = torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0).expand(n, h, w, 2)
        scale = delta.new_tensor([2.0 / w, 2.0 / h])
        grid = identity + delta.permute(0, 2, 3, 1) * scale
        return F.grid_sample(low, grid, mode="bilinear", padding_mode="border", align_corners=False)


class SANet(nn.Module):
    """Spatial Alignment Network → segmentation logits ``(N, num_classes, H, W)`` at the input size.

    Encoder: ResNet-18 (``width`` 64 as in the paper), last stage dilated. PPM (or, with
    ``use_ppm=False``, a 1×1 Conv-BN-ReLU) maps the 1/16 features to ``lateral`` channels; stages 3, 2, 1
    enter through 1×1 Conv-BN-ReLU laterals. Three SAMs (or, with ``use_sam=False``, bilinear
    upsampling) carry the top map down (1/16 → 1/16 → 1/8 → 1/4), each added to its lateral; the four
    decoder maps are upsampled to 1/4, concatenated, fused by a 3×3 Conv-BN-ReLU, classified by a 1×1
    conv and upsampled ×4 to the input. Any input size works; multiples of 16 align the pyramid exactly.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 64, lateral: int = 128,
                 use_ppm: bool = True, use_sam: bool = True):
        super().__init__()
        self.encoder = ResNetEncoder2d(in_channels, RESNET18_LAYERS, width, dilate_last=True)
        ch = self.encoder.channels  # stem, stage1..stage4
        self.use_ppm, self.use_sam = use_ppm, use_sam
        self.context = PyramidPooling(ch[4], lateral) if use_ppm else conv_bn_relu(ch[4], lateral, 1)
        self.laterals = nn.ModuleList(conv_bn_relu(c, lateral, 1) for c in (ch[3], ch[2], ch[1]))
        self.align = nn.ModuleList(SpatialAlignment(lateral, lateral, lateral) for _ in range(3)) if use_sam else None
        self.fuse = conv_bn_relu(4 * lateral, lateral, 3)
        self.head = nn.Conv2d(lateral, num_classes, 1)
        init_weights(self.context)
        init_weights(self.laterals)
        init_weights(self.fuse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        top = self.context(features[4])
        decoded = [top]
        for i, skip in enumerate((features[3], features[2], features[1])):
            lateral = self.laterals[i](skip)
            if self.align is not None:
                up = self.align[i](top, lateral)
            else:
                up = _upsample(top, lateral.shape[2:])
            top = up + lateral
            decoded.append(top)
        size = decoded[-1].shape[2:]
        fused = self.fuse(torch.cat([_upsample(d, size) if d.shape[2:] != size else d for d in decoded], dim=1))
        return _upsample(self.head(fused), x.shape[2:])


class SliceClassifier(nn.Module):
    """HCF stage 1: ResNet-18 + global average pooling + FC → ``(N, num_classes)`` logits
    (GTV absent / present). ``last_conv_stage`` is the module Grad-CAM reads (stage 4)."""

    def __init__(self, in_channels: int = 1, width: int = 64, num_classes: int = 2):
        super().__init__()
        self.encoder = ResNetEncoder2d(in_channels, RESNET18_LAYERS, width, dilate_last=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.encoder.channels[-1], num_classes)

    @property
    def last_conv_stage(self) -> nn.Module:
        return self.encoder.stages[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.encoder(x)[-1]), 1))

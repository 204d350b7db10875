"""A small 2D ResNet-18/34 written once for the GTV networks (SANet, the slice classifier, ResFormer).

torchvision is not a dependency of the engine, so the BasicBlock ResNet (He et al. 2016) is written
here. ``width`` scales every stage (64 is the papers' ResNet; 16 or 32 keeps CPU demos and tests fast).

Resolutions of :class:`ResNetEncoder2d` for an ``H × W`` input (as in ResNet: 7×7 conv stride 2, then
3×3 max-pool stride 2):

==========  ===========  ============================================================
feature     channels     resolution
==========  ===========  ============================================================
stem        width        H/4
stage 1     width        H/4  (stride 1)
stage 2     2·width      H/8  (stride 2)
stage 3     4·width      H/16 (stride 2)
stage 4     8·width      H/32 (stride 2), or H/16 with ``dilate_last`` (stride 1, dilation 2,
                         the HCF/SANet encoder: higher-resolution semantic features for small GTVs)
==========  ===========  ============================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

RESNET18_LAYERS = (2, 2, 2, 2)
RESNET34_LAYERS = (3, 4, 6, 3)


class BasicBlock(nn.Module):
    """ReLU(x + BN(conv3×3(ReLU(BN(conv3×3(x)))))) with a 1×1 projection when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()  # not in place: Grad-CAM hooks read block outputs
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def make_stage(in_ch: int, out_ch: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """``blocks`` BasicBlocks; only the first one changes stride and channels."""
    layers = [BasicBlock(in_ch, out_ch, stride, dilation)]
    layers += [BasicBlock(out_ch, out_ch, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions and unit BatchNorm, as ResNet trains from scratch."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNetEncoder2d(nn.Module):
    """ResNet-18 (``layers=(2,2,2,2)``) or ResNet-34 (``(3,4,6,3)``) without its classifier.

    ``forward`` returns ``[stem, stage1, stage2, stage3, stage4]`` (see the module docstring for the
    resolutions); ``channels`` lists their channel counts.
    """

    def __init__(self, in_channels: int = 1, layers: Sequence[int] = RESNET18_LAYERS, width: int = 64,
                 dilate_last: bool = False):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNetEncoder2d needs four stage depths, got {tuple(layers)}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, padding=3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(3, 2, padding=1))
        widths = (width, 2 * width, 4 * width, 8 * width)
        strides = (1, 2, 2, 1 if dilate_last else 2)
        dilations = (1, 1, 1, 2 if dilate_last else 1)
        stages, in_ch = [], width
        for out_ch, blocks, stride, dilation in zip(widths, layers, strides, dilations):
            stages.append(make_stage(in_ch, out_ch, blocks, stride, dilation))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.channels = (width, *widths)
        self.dilate_last = dilate_last
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features

"""ResFormer: the multi-task U-Net of "ResFormer" (segmentation + image-level classification, 2D).

Each of the four encoder levels is a ResFormer block: ResNet-34 BasicBlocks (3, 4, 6, 3 per level)
and a Swin Transformer block (a W-MSA and an SW-MSA layer, MONAI's ``SwinTransformerBlock``), either in
sequence (ResNet then Swin) or in parallel (summed). The skips to the decoder pass through DFE
modules (dilated convolutions at rates 6/12/18 and spatial attention); a classification head reads the
global average of the last two levels, so the encoder learns features for both tasks.

Input size: the stem (conv + max-pool) halves the input and three PatchMerging convolutions (3×3,
stride 2) halve it again, so levels 1–4 are at 1/2, 1/4, 1/8, 1/16 and the U-Net decoder needs H and W
to be multiples of 16 (``SIZE_DIVISOR``; hence every multiple of 32 works). The Swin window is
``window_size`` (8): at 512×512 every level (256…32) is a whole number of windows; other sizes are
padded to a window multiple by MONAI, and a level smaller than the window uses one window, unshifted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import SwinTransformerBlock, compute_mask, get_window_size
from torch import nn

from engine.models.resnet2d import RESNET34_LAYERS, init_weights, make_stage

SIZE_DIVISOR = 16
SWIN_HEADS = (2, 4, 8, 16)
RESFORMER_MODES = ("sequential", "parallel")


class SpatialAttention(nn.Module):
    """CBAM's spatial attention: x · σ(conv7×7([mean_c x, max_c x])), to suppress irrelevant areas."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(stats))


class DFE(nn.Module):
    """Dilated feature enhancement: SA(ReLU(Σ_d BN(conv1×1(BN(dconv3×3_d(x)))))), d ∈ ``rates``;
    multi-scale context for each skip without changing its shape."""

    def __init__(self, ch: int, rates: Sequence[int] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch, ch, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(ch),
                          nn.Conv2d(ch, ch, 1, bias=False), nn.BatchNorm2d(ch))
            for d in rates)
        self.attention = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(F.relu(sum(branch(x) for branch in self.branches)))


class SwinLayer2d(nn.Module):
    """A W-MSA block then an SW-MSA block (MONAI's ``SwinTransformerBlock``) on a channels-first map.

    MONAI's ``BasicLayer`` does the same but needs einops, which the engine does not install; this is
    its 2D path with ``permute``. Maps not divisible by the window are padded inside the blocks.
    """

    def __init__(self, ch: int, heads: int, window_size: int = 8):
        super().__init__()
        self.window = (window_size, window_size)
        self.shift = (window_size // 2, window_size // 2)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(ch, heads, self.window, shift, qkv_bias=True)
            for shift in ((0, 0), self.shift))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        window, shift = get_window_size((h, w), self.window, self.shift)
        padded = [-(-h // window[0]) * window[0], -(-w // window[1]) * window[1]]
        mask = compute_mask(padded, window, shift, x.device)
        y = x.permute(0, 2, 3, 1).contiguous()
        for block in self.blocks:
            y = block(y, mask)
        return y.permute(0, 3, 1, 2).contiguous()


class ResFormerBlock(nn.Module):
    """One encoder level: ``blocks`` ResNet BasicBlocks and a Swin block (W-MSA + SW-MSA), combined
    ``"sequential"`` (Swin(ResNet(x))) or ``"parallel"`` (ResNet(x) + Swin(x)); ``swin=False``
    keeps the ResNet part only (ablation)."""

    def __init__(self, ch: int, blocks: int, heads: int, window_size: int = 8, swin: bool = True,
                 mode: str = "sequential"):
        super().__init__()
        if mode not in RESFORMER_MODES:
            raise ValueError(f"Unknown ResFormer mode '{mode}'; choose one of {', '.join(RESFORMER_MODES)}")
        if swin and ch % heads:
            raise ValueError(f"{ch} channels cannot be split into {heads} attention heads; change the width")
        self.mode = mode
        self.res = make_stage(ch, ch, blocks)
        self.swin = SwinLayer2d(ch, heads, window_size) if swin else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swin is None:
            return self.res(x)
        if self.mode == "sequential":
            return self.swin(self.res(x))
        return self.res(x) + self.swin(x)


class ResFormer(nn.Module):
    """Multi-task U-Net → ``(segmentation_logits (N, num_classes, H, W), classification_logits
    (N, num_slice_classes))``; H and W must be multiples of ``SIZE_DIVISOR`` (16).

    ``width`` is level 1's channel count (64 in the paper: levels 64/128/256/512); ``swin`` and ``dfe``
    switch the Swin blocks and the DFE skips off for ablations (a plain skip replaces DFE).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, num_slice_classes: int = 2, width: int = 64,
                 swin: bool = True, dfe: bool = True, mode: str = "sequential", window_size: int = 8,
                 layers: Sequence[int] = RESNET34_LAYERS):
        super().__init__()
        widths = tuple(width * 2 ** i for i in range(4))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, padding=3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, padding=1))
        self.merge = nn.ModuleList(  # PatchMerging between levels: 3×3 conv, stride 2
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 3, 2, padding=1, bias=False),
                          nn.BatchNorm2d(widths[i + 1]))
            for i in range(3))
        self.levels = nn.ModuleList(ResFormerBlock(c, b, h, window_size, swin, mode)
                                    for c, b, h in zip(widths, layers, SWIN_HEADS))
        self.skips = nn.ModuleList(DFE(c) if dfe else nn.Identity() for c in widths)
        self.decoder = nn.ModuleList(  # levels 3, 2, 1: Conv-BN-ReLU on cat(skip, upsampled decoder map)
            nn.Sequential(nn.Conv2d(widths[i] + widths[i + 1], widths[i], 3, padding=1, bias=False),
                          nn.BatchNorm2d(widths[i]), nn.ReLU())
            for i in (2, 1, 0))
        self.seg_head = nn.Conv2d(width, num_classes, 1)
        self.cls_head = nn.Sequential(nn.Linear(widths[2] + widths[3], widths[2]), nn.ReLU(),
                                      nn.Linear(widths[2], num_slice_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-2] % SIZE_DIVISOR or x.shape[-1] % SIZE_DIVISOR:
            raise ValueError(f"ResFormer needs H and W divisible by {SIZE_DIVISOR}, got {tuple(x.shape[-2:])}")
        features, f = [], self.stem(x)
        for i, level in enumerate(self.levels):
            if i:
                f = self.merge[i - 1](f)
            f = level(f)
            features.append(f)
        pooled = torch.cat([features[2].mean(dim=(2, 3)), features[3].mean(dim=(2, 3))], dim=1)
        classification = self.cls_head(pooled)
        skips = [skip(f) for skip, f in zip(self.skips, features)]
        d = F.interpolate(skips[3], scale_factor=2, mode="bilinear", align_corners=False)
        for block, skip in zip(self.decoder, (skips[2], skips[1], skips[0])):
            d = F.interpolate(block(torch.cat([skip, d], dim=1)), scale_factor=2, mode="bilinear",
                              align_corners=False)
        return self.seg_head(d), classification

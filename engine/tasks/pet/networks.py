"""The multi-task multi-scale PET network: a shared 3D encoder, a reconstruction and a segmentation
decoder (the "W"), a pathology classifier and an outcome predictor.

The outcome predictor sees (i) tumour features derived from the segmentation — a small CNN on the
PET masked by the tumour probability, plus differentiable uptake statistics of the tumour and of two
peritumoral shells — and (ii) channel-wise global-average-pooled encoder features of levels 3 to 5
(the multi-scale global features). Convolution blocks are MONAI's; the heads and the wiring are the
paper's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from monai.networks.blocks import UnetBasicBlock, UnetOutBlock, UnetUpBlock
from torch import nn

#: Encoder levels (1-based) whose pooled features feed the outcome predictor (the paper's levels 3–5).
MULTI_SCALE_LEVELS = (3, 4, 5)
DEPTH = 5
#: Batch norm: its running statistics make a whole-volume pass equal to the crops it was trained on.
NORM = "batch"
#: Number of hand-defined tumour statistics (:func:`tumour_statistics`).
N_STATISTICS = 8
#: Shell widths (voxels) of the two peritumoral rings: 0–2 and 2–5 voxels (0–4 and 4–10 mm at 2 mm).
SHELL_RADII = (2, 5)


@dataclass(frozen=True)
class PetNetworkSpec:
    """What builds the network; stored in the bundle's ``architecture``."""

    width: int = 4
    crop_size: tuple[int, int, int] = (48, 48, 48)
    n_pathologies: int = 2
    reconstruction: bool = True      # ablation: no reconstruction decoder
    segmentation: bool = True        # off for the single-task outcome ablation
    pathology: bool = True           # off for the single-task outcome ablation
    multi_scale: bool = True         # ablation: outcome from tumour features only
    suv_scale: float = 5.0           # network input = SUV / suv_scale

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "crop_size": list(self.crop_size)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PetNetworkSpec:
        return cls(**{**d, "crop_size": tuple(int(s) for s in d["crop_size"])})

    @property
    def channels(self) -> list[int]:
        return [self.width * 2 ** i for i in range(DEPTH)]

    @property
    def tumour_features(self) -> bool:
        """Outcome from segmentation-derived tumour features (needs the segmentation decoder)."""
        return self.segmentation


@dataclass
class PetOutputs:
    """All heads' outputs for a batch; absent heads give None."""

    outcome_logit: torch.Tensor                  # (B,)
    segmentation_logits: torch.Tensor | None     # (B, 1, z, y, x)
    reconstruction: torch.Tensor | None          # (B, 1, z, y, x), in network-input units
    pathology_logits: torch.Tensor | None        # (B, n_pathologies)
    encoder_features: list[torch.Tensor]         # levels 1..5


class Decoder(nn.Module):
    """U-Net decoder from the deepest encoder level back to full resolution, one output channel."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.ups = nn.ModuleList(
            UnetUpBlock(3, channels[i + 1], channels[i], kernel_size=3, stride=1, upsample_kernel_size=2,
                        norm_name=NORM) for i in reversed(range(len(channels) - 1)))
        self.out = UnetOutBlock(3, channels[0], 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, skip in zip(self.ups, reversed(features[:-1])):
            x = up(x, skip)
        return self.out(x)


def soft_dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-level dilation of a (B, 1, ...) probability map by a cube of half-width ``radius``."""
    return nn.functional.max_pool3d(mask, kernel_size=2 * radius + 1, stride=1, padding=radius)


def tumour_statistics(suv: torch.Tensor, probability: torch.Tensor, voxel_ml: float) -> torch.Tensor:
    """Differentiable uptake statistics of the tumour a probability map describes (B, N_STATISTICS):
    log volume, log mean and log peak SUV, coefficient of variation, and the mean SUV of two
    peritumoral shells, absolute and relative to the tumour mean (the uptake pattern around it)."""
    eps = 1e-3
    p = probability.clamp(0.0, 1.0)
    mass = p.sum(dim=(1, 2, 3, 4))
    mean = (suv * p).sum(dim=(1, 2, 3, 4)) / (mass + eps)
    var = (p * (suv - mean.view(-1, 1, 1, 1, 1)) ** 2).sum(dim=(1, 2, 3, 4)) / (mass + eps)
    peak = (suv * p).amax(dim=(1, 2, 3, 4))
    inner = soft_dilate(p, SHELL_RADII[0])
    outer = soft_dilate(p, SHELL_RADII[1])
    shells = []
    for ring in ((inner - p).clamp_min(0.0), (outer - inner).clamp_min(0.0)):
        shells.append((suv * ring).sum(dim=(1, 2, 3, 4)) / (ring.sum(dim=(1, 2, 3, 4)) + eps))
    rel = [s / (mean + eps) for s in shells]
    return torch.stack([torch.log(mass * voxel_ml + eps), torch.log(mean + eps), torch.log(peak + eps),
                        var.sqrt() / (mean + eps), *shells, *rel], dim=1)


class TumourBranch(nn.Module):
    """The paper's CNN on the segmentation result: 2 convolutions, max-pool, 2 convolutions, GAP; it starts
    at half resolution (average-pooled input), which halves its cost and loses little before the GAP."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.AvgPool3d(2),
            UnetBasicBlock(3, 2, 2 * width, kernel_size=3, stride=1, norm_name=NORM), nn.MaxPool3d(2),
            UnetBasicBlock(3, 2 * width, 4 * width, kernel_size=3, stride=1, norm_name=NORM),
            nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.out_features = 4 * width

    def forward(self, x: torch.Tensor, probability: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([x * probability, probability], dim=1))


class PathologyHead(nn.Module):
    """Convolution + max-pool + flatten on the deepest encoder level, then an MLP (128, 64; ELU, dropout)."""

    def __init__(self, channels: int, deepest_size: tuple[int, ...], n_classes: int):
        super().__init__()
        pooled = 1
        for s in deepest_size:
            pooled *= (s + 1) // 2  # max-pool with ceil_mode
        self.body = nn.Sequential(
            nn.Conv3d(channels, channels, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool3d(2, ceil_mode=True),
            nn.Flatten(), nn.Linear(channels * pooled, 128), nn.ELU(), nn.Dropout(0.5),
            nn.Linear(128, 64), nn.ELU(), nn.Dropout(0.5), nn.Linear(64, n_classes))

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        return self.body(deepest)


class PetMultiTaskNet(nn.Module):
    """Shared encoder; reconstruction and segmentation decoders; pathology and outcome heads."""

    def __init__(self, spec: PetNetworkSpec):
        super().__init__()
        self.spec = spec
        ch = spec.channels
        self.encoder = nn.ModuleList(
            [UnetBasicBlock(3, 1 if i == 0 else ch[i - 1], ch[i], kernel_size=3, stride=1, norm_name=NORM)
             for i in range(DEPTH)])
        self.pool = nn.MaxPool3d(2)
        self.reconstruction = Decoder(ch) if spec.reconstruction and not self.single_task else None
        self.segmentation = Decoder(ch) if spec.segmentation else None
        deepest = tuple(s // 2 ** (DEPTH - 1) for s in spec.crop_size)
        self.pathology = PathologyHead(ch[-1], deepest, spec.n_pathologies) if spec.pathology else None
        self.tumour_branch = TumourBranch(spec.width) if spec.tumour_features else None
        n_in = (self.tumour_branch.out_features + N_STATISTICS if self.tumour_branch else 0)
        if spec.multi_scale or not spec.tumour_features:
            n_in += sum(ch[level - 1] for level in MULTI_SCALE_LEVELS)
        hidden = 8 * spec.width
        self.outcome = nn.Sequential(nn.Linear(n_in, hidden), nn.ELU(), nn.Dropout(0.3), nn.Linear(hidden, hidden),
                                     nn.ELU(), nn.Linear(hidden, 1))
        self.voxel_ml = 0.008  # 2 mm isotropic voxels

    @property
    def single_task(self) -> bool:
        return not self.spec.segmentation and not self.spec.pathology

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            features.append(x)
        return features

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits only (sliding-window inference over a whole volume)."""
        if self.segmentation is None:
            raise ValueError("this network has no segmentation decoder (single-task outcome ablation)")
        return self.segmentation(self.encode(x))

    def forward(self, x: torch.Tensor, tumour_probability: torch.Tensor | None = None,
                reconstruct: bool = True) -> PetOutputs:
        """``x``: (B, 1, crop) PET in network units; ``tumour_probability`` replaces the segmentation's
        own probability in the tumour features (the reference mask while training); ``reconstruct=False``
        skips the reconstruction decoder, which only training needs."""
        features = self.encode(x)
        seg = self.segmentation(features) if self.segmentation is not None else None
        recon = self.reconstruction(features) if self.reconstruction is not None and reconstruct else None
        pathology = self.pathology(features[-1]) if self.pathology is not None else None
        parts = []
        if self.tumour_branch is not None and seg is not None:
            p = torch.sigmoid(seg) if tumour_probability is None else tumour_probability
            suv = x * self.spec.suv_scale
            parts += [self.tumour_branch(x, p), tumour_statistics(suv, p, self.voxel_ml)]
        if self.spec.multi_scale or self.tumour_branch is None:
            parts += [features[level - 1].mean(dim=(2, 3, 4)) for level in MULTI_SCALE_LEVELS]
        logit = self.outcome(torch.cat(parts, dim=1))[:, 0]
        return PetOutputs(logit, seg, recon, pathology, features)


def build_network(architecture: dict[str, Any]) -> PetMultiTaskNet:
    return PetMultiTaskNet(PetNetworkSpec.from_dict(architecture["network"]))

"""nn-MTNet (nn-TransEC §3.2–3.5): residual 3D U-Net for segmentation, a classification encoder of
the same structure, and cross-task attention gates that let segmentation features steer staging.

Built from a plan's :class:`~engine.planning.NetworkTopology`, with MONAI's residual U-Net blocks
(InstanceNorm, LeakyReLU 0.01). What the paper adds is written here: the gate, the shared-structure
classification encoder (so the trained segmentation encoder's weights transfer into it), and the
FC → LeakyReLU → FC head.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, UnetUpBlock
from torch import nn

from engine.planning.planner import NetworkTopology

NORM = ("INSTANCE", {"affine": True})
ACT = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})
#: Deep supervision at 4 depths (full resolution + 3 coarser decoder outputs), as in the paper.
DEEP_SUPERVISION_DEPTHS = 4


@dataclass
class NetworkSpec:
    """Everything needed to rebuild a network from a bundle's JSON (no pickled modules)."""

    in_channels: int
    num_classes: int
    features: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    num_stages_cls: int = 4
    deep_supervision: int = DEEP_SUPERVISION_DEPTHS

    @classmethod
    def from_topology(cls, topo: NetworkTopology, in_channels: int, num_classes: int, num_stages_cls: int = 4,
                      max_features: int | None = None) -> "NetworkSpec":
        feats = list(topo.features_per_stage)
        if max_features is not None:
            feats = [min(f, max_features) for f in feats]
        return cls(in_channels, num_classes, feats, [list(k) for k in topo.kernel_sizes],
                   [list(s) for s in topo.strides], num_stages_cls)

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualEncoder(nn.Module):
    """One residual block per stage; the first keeps resolution, the others downsample by the plan's strides."""

    def __init__(self, in_channels: int, features: list[int], kernel_sizes: list[list[int]], strides: list[list[int]]):
        super().__init__()
        chans = [in_channels] + list(features)
        self.stages = nn.ModuleList(
            UnetResBlock(3, chans[i], chans[i + 1], kernel_sizes[i], strides[i], NORM, ACT)
            for i in range(len(features))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class SegmentationNet(nn.Module):
    """Residual 3D U-Net with deep supervision; returns logits at full resolution, or in training a
    list of logits from the finest to the coarsest supervised depth."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        f, k, s = spec.features, spec.kernel_sizes, spec.strides
        self.encoder = ResidualEncoder(spec.in_channels, f, k, s)
        self.decoder = nn.ModuleList(
            UnetUpBlock(3, f[i + 1], f[i], k[i], s[i + 1], s[i + 1], NORM, ACT, res_block=True)
            for i in reversed(range(len(f) - 1))
        )
        n_heads = min(spec.deep_supervision, len(f) - 1)
        self.heads = nn.ModuleList(UnetOutBlock(3, f[i], spec.num_classes) for i in range(n_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = self.encoder(x)
        y = skips[-1]
        decoded: dict[int, torch.Tensor] = {}
        for up, i in zip(self.decoder, reversed(range(len(skips) - 1))):
            y = up(y, skips[i])
            decoded[i] = y
        if self.training and len(self.heads) > 1:
            return [self.heads[i](decoded[i]) for i in range(len(self.heads))]
        return self.heads[0](decoded[0])


class CrossTaskAttentionGate(nn.Module):
    """α = σ(ψ(ReLU(Wx·F_cls + Wg·F_seg))) ∈ [0, 1]; output F_cls·α (nn-TransEC Fig. 4).

    The segmentation feature map of the same depth is the gating signal, so staging looks where the
    segmentation encoder found structure."""

    def __init__(self, channels: int, inter_channels: int | None = None):
        super().__init__()
        inter = inter_channels or max(1, channels // 2)
        self.w_x = nn.Conv3d(channels, inter, 1, bias=False)
        self.w_g = nn.Conv3d(channels, inter, 1, bias=True)
        self.psi = nn.Conv3d(inter, 1, 1, bias=True)

    def coefficients(self, f_cls: torch.Tensor, f_seg: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.psi(torch.relu(self.w_x(f_cls) + self.w_g(f_seg))))

    def forward(self, f_cls: torch.Tensor, f_seg: torch.Tensor) -> torch.Tensor:
        return f_cls * self.coefficients(f_cls, f_seg)


class StageClassifier(nn.Module):
    """Classification encoder with the segmentation encoder's structure, gated at every depth,
    then global average pooling and FC → LeakyReLU → FC(num_stages)."""

    def __init__(self, spec: NetworkSpec, num_stages: int = 4, attention: bool = True, hidden: int = 128,
                 dropout: float = 0.2):
        super().__init__()
        self.encoder = ResidualEncoder(spec.in_channels, spec.features, spec.kernel_sizes, spec.strides)
        self.attention = attention
        self.gates = nn.ModuleList(CrossTaskAttentionGate(c) for c in spec.features) if attention else None
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(spec.features[-1], hidden),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_stages),
        )
        self.pool = nn.AdaptiveAvgPool3d(1)

    def features(self, x: torch.Tensor, seg_features: list[torch.Tensor] | None) -> torch.Tensor:
        """Feature map of the last stage (the Grad-CAM target layer's output)."""
        if self.attention and seg_features is None:
            raise ValueError("attention gates need the segmentation encoder's features")
        for d, stage in enumerate(self.encoder.stages):
            x = stage(x)
            if self.gates is not None:
                x = self.gates[d](x, seg_features[d])  # type: ignore[index]
        return x

    def forward(self, x: torch.Tensor, seg_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self.head(self.pool(self.features(x, seg_features)))

    def load_encoder_from(self, encoder: ResidualEncoder) -> None:
        """Transfer: initialise from the trained segmentation encoder (same structure by construction)."""
        self.encoder.load_state_dict(copy.deepcopy(encoder.state_dict()))


class NnMTNet(nn.Module):
    """Segmentation network + stage classifier; the classifier sees a KRT crop and, with attention,
    the segmentation encoder's features of the same crop."""

    def __init__(self, spec: NetworkSpec, num_stages: int = 4, attention: bool = True):
        super().__init__()
        self.segmentation = SegmentationNet(spec)
        self.classifier = StageClassifier(spec, num_stages, attention)

    def classify(self, crop: torch.Tensor) -> torch.Tensor:
        seg_features = None
        if self.classifier.attention:
            seg_features = self.segmentation.encoder(crop)
        return self.classifier(crop, seg_features)

    def transfer_encoder(self) -> None:
        self.classifier.load_encoder_from(self.segmentation.encoder)

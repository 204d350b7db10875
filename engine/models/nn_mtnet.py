"""nn-MTNet (nn-TransEC §3.2–3.5): residual 3D U-Net for segmentation, a classification encoder of
the same structure, and cross-task attention gates that let segmentation features steer staging.

Built from a plan's :class:`~engine.planning.NetworkTopology` with MONAI's residual blocks
(InstanceNorm, LeakyReLU 0.01). What the paper adds is written here: the cross-task gate, the
classification encoder that mirrors the segmentation encoder (so the trained encoder's weights
transfer into it) and the FC → LeakyReLU → FC head.

The full-resolution segmentation network of the cascade sees the CT plus the one-hot low-resolution
prediction (``1 + C`` channels); the classifier sees the KRT-cropped CT only (paper §3.5), so the
transfer copies the CT input channel of the first convolutions and everything else as is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock
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
    deep_supervision: int = DEEP_SUPERVISION_DEPTHS

    @classmethod
    def from_topology(cls, topo: NetworkTopology, in_channels: int, num_classes: int,
                      base_features: int | None = None, max_features: int | None = None) -> "NetworkSpec":
        """``base_features``/``max_features`` narrow the plan's widths (nnU-Net: 32 doubling to 320),
        e.g. for CPU training or small shipped demo weights; depth, strides and kernels stay the plan's."""
        feats = list(topo.features_per_stage)
        if base_features is not None:
            feats = [base_features * 2 ** i for i in range(len(feats))]
        if max_features is not None:
            feats = [min(f, max_features) for f in feats]
        return cls(in_channels, num_classes, feats, [list(k) for k in topo.kernel_sizes],
                   [list(s) for s in topo.strides])

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkSpec":
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def total_stride(self) -> list[int]:
        out = [1, 1, 1]
        for s in self.strides:
            out = [a * b for a, b in zip(out, s)]
        return out


class ResidualEncoder(nn.Module):
    """One residual block per stage; the first keeps resolution, the others downsample by the plan's strides."""

    def __init__(self, in_channels: int, features: list[int], kernel_sizes: list[list[int]],
                 strides: list[list[int]]):
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


class ResidualUpBlock(nn.Module):
    """Transposed convolution by the skip's stride, concatenation with the skip, one residual block."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: list[int], stride: list[int]):
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, stride, stride, bias=False)
        self.block = UnetResBlock(3, 2 * out_channels, out_channels, kernel_size, 1, NORM, ACT)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class SegmentationNet(nn.Module):
    """Residual 3D U-Net with deep supervision: in training it returns logits at the finest
    ``deep_supervision`` decoder depths (finest first), in eval the full-resolution logits only."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        f, k, s = spec.features, spec.kernel_sizes, spec.strides
        self.encoder = ResidualEncoder(spec.in_channels, f, k, s)
        # decoder[j] goes from depth len(f)-1-j to depth len(f)-2-j
        self.decoder = nn.ModuleList(ResidualUpBlock(f[i + 1], f[i], k[i], s[i + 1])
                                     for i in reversed(range(len(f) - 1)))
        n_heads = max(1, min(spec.deep_supervision, len(f) - 1))
        self.heads = nn.ModuleList(UnetOutBlock(3, f[i], spec.num_classes) for i in range(n_heads))

    def decode(self, skips: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        y = skips[-1]
        decoded: dict[int, torch.Tensor] = {}
        for up, i in zip(self.decoder, reversed(range(len(skips) - 1))):
            y = up(y, skips[i])
            decoded[i] = y
        return decoded

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        decoded = self.decode(self.encoder(x))
        if self.training and len(self.heads) > 1:
            return [self.heads[i](decoded[i]) for i in range(len(self.heads))]
        return self.heads[0](decoded[0])


class CrossTaskAttentionGate(nn.Module):
    """α = σ(ψ(ReLU(Wx·F_cls + Wg·F_seg))) ∈ [0, 1]; output F_cls·α (nn-TransEC Fig. 4).

    The segmentation encoder's feature map at the same depth is the gating signal, so staging looks
    where the segmentation encoder found structure."""

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


@dataclass
class ClassifierOptions:
    """Ablation switches of the classification branch (nn-TransEC Tables 12–13)."""

    num_stages: int = 4
    attention: bool = True
    hidden: int = 128
    dropout: float = 0.2
    in_channels: int = 1
    extra: dict = field(default_factory=dict)


class StageClassifier(nn.Module):
    """Classification encoder with the segmentation encoder's structure, gated at every depth, then
    global average pooling and FC → LeakyReLU → FC(num_stages)."""

    def __init__(self, spec: NetworkSpec, options: ClassifierOptions):
        super().__init__()
        self.options = options
        self.encoder = ResidualEncoder(options.in_channels, spec.features, spec.kernel_sizes, spec.strides)
        self.gates = (nn.ModuleList(CrossTaskAttentionGate(c) for c in spec.features)
                      if options.attention else None)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(spec.features[-1], options.hidden),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Dropout(options.dropout),
            nn.Linear(options.hidden, options.num_stages),
        )

    @property
    def uses_attention(self) -> bool:
        return self.gates is not None

    @property
    def last_conv_stage(self) -> nn.Module:
        """The Grad-CAM target: the classification encoder's last stage."""
        return self.encoder.stages[-1]

    def features(self, x: torch.Tensor, seg_features: list[torch.Tensor] | None) -> torch.Tensor:
        if self.gates is not None and seg_features is None:
            raise ValueError("the attention gates need the segmentation encoder's features")
        for d, stage in enumerate(self.encoder.stages):
            x = stage(x)
            if self.gates is not None:
                x = self.gates[d](x, seg_features[d])  # type: ignore[index]
        return x

    def forward(self, x: torch.Tensor, seg_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self.head(self.pool(self.features(x, seg_features)))

    def load_encoder_from(self, encoder: ResidualEncoder) -> int:
        """Transfer (paper §3.2.3): copy the trained segmentation encoder. Input-channel tensors keep
        the classifier's first ``in_channels`` (the CT channel). Returns the number of tensors copied."""
        own = self.encoder.state_dict()
        copied = 0
        for name, value in encoder.state_dict().items():
            if name not in own:
                continue
            target = own[name]
            if value.shape != target.shape:
                if value.ndim >= 2 and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
                    value = value[:, : target.shape[1]]
                else:
                    continue
            own[name] = value.detach().clone()
            copied += 1
        self.encoder.load_state_dict(own)
        return copied


class NnMTNet(nn.Module):
    """Full-resolution segmentation network + stage classifier.

    ``classify(ct_crop, seg_input_crop)``: the classifier sees the KRT crop of the CT; with attention,
    the segmentation encoder sees the same crop with its own inputs (CT + one-hot low-resolution
    prediction) and gates the classifier at every depth. ``segmentation``: an existing network to
    share (several classifiers of an ensemble gate on one segmentation network)."""

    def __init__(self, spec: NetworkSpec, options: ClassifierOptions | None = None,
                 segmentation: SegmentationNet | None = None):
        super().__init__()
        self.segmentation = segmentation if segmentation is not None else SegmentationNet(spec)
        self.classifier = StageClassifier(spec, options or ClassifierOptions())

    def classify(self, ct_crop: torch.Tensor, seg_input_crop: torch.Tensor | None = None) -> torch.Tensor:
        seg_features = None
        if self.classifier.uses_attention:
            if seg_input_crop is None:
                raise ValueError("classification with attention needs the segmentation network's input crop")
            seg_features = self.segmentation.encoder(seg_input_crop)
        return self.classifier(ct_crop, seg_features)

    def transfer_encoder(self) -> int:
        return self.classifier.load_encoder_from(self.segmentation.encoder)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""The end-to-end NPC network: a 3D U-Net segments the GTV (sigmoid), its probability map × the image
feeds a 3D Bottleneck Transformer (ResNet-50 whose last three blocks attend instead of convolving), and
the feature-fusion-aware module joins the deepest segmentation features with the staging features
before the T1–T4 classifier.

The U-Net is built from MONAI's DynUNet blocks with the plan's strides and kernels, the ResNet-50 is
MONAI's; :mod:`engine.tasks.npc.blocks` holds the paper's additions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetUpBlock
from monai.networks.nets.resnet import ResNet
from torch import nn

from engine.tasks.npc.blocks import BottleneckAttention, FeatureFusionAttention
from engine.tasks.npc.options import ATTENTION_HEADS

#: ResNet-50: bottleneck blocks per stage.
RESNET50_LAYERS = (3, 4, 6, 3)
GROUP_NORM = ("group", {"num_groups": 8})
#: z/in-plane spacing ratio from which the stem keeps the slice axis (thick slices): kernel 3, stride 1.
THICK_SLICE_RATIO = 2.0
#: The GTV probability the segmentation head starts at (the tumour is about 1 % of the head crop).
TUMOUR_PRIOR = 0.01


@dataclass
class NetworkConfig:
    """Everything that fixes the network's shape; stored in the bundle's ``architecture``."""

    patch_size: list[int]
    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    unet_widths: list[int]
    stage_width: int
    thick_slices: bool
    num_stages: int = 4
    fusion: bool = True
    bot: bool = True
    gating: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        return cls(**d)

    @property
    def total_stride(self) -> list[int]:
        return [math.prod(s[a] for s in self.strides) for a in range(3)]

    @property
    def padded_size(self) -> list[int]:
        """The patch padded up to a multiple of the U-Net's total stride (what both branches see)."""
        return [math.ceil(p / t) * t for p, t in zip(self.patch_size, self.total_stride)]

    def stage_sizes(self) -> tuple[list[int], list[int]]:
        """The ResNet's feature-map size entering its last stage and leaving it (attention grids)."""
        size = list(self.padded_size)
        stem = [1 if self.thick_slices else 2, 2, 2]
        size = [math.ceil(n / s) for n, s in zip(size, stem)]       # stem convolution
        for _ in range(3):                                            # max pool, stages 2 and 3
            size = [math.ceil(n / 2) for n in size]
        return size, [math.ceil(n / 2) for n in size]


def network_config(patch_size: Sequence[int], spacing: Sequence[float], unet_width: int, unet_max_width: int,
                   stage_width: int, num_stages: int, fusion: bool = True, bot: bool = True,
                   gating: bool = True) -> NetworkConfig:
    """The network for a patch at a spacing: nnU-Net's pooling rule for the U-Net, the paper's widths."""
    from engine.planning.planner import network_topology

    topology, _ = network_topology(list(patch_size), list(spacing), unet_max_width)
    widths = [min(unet_width * 2 ** i, unet_max_width) for i in range(topology.num_stages)]
    thick = spacing[0] / min(spacing[1:]) >= THICK_SLICE_RATIO
    return NetworkConfig(list(patch_size), topology.strides, topology.kernel_sizes, widths, stage_width, thick,
                         num_stages, fusion, bot, gating)


class UNet3d(nn.Module):
    """A 3D U-Net with one sigmoid output; also returns the bottleneck (last encoder unit) and the first
    decoder unit's features, which the feature-fusion-aware module reads."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        w, k, s = config.unet_widths, config.kernel_sizes, config.strides
        self.encoder = nn.ModuleList(
            UnetBasicBlock(3, 1 if i == 0 else w[i - 1], w[i], k[i], s[i], "instance") for i in range(len(w)))
        self.decoder = nn.ModuleList(
            UnetUpBlock(3, w[i + 1], w[i], k[i], 1, s[i + 1], "instance") for i in reversed(range(len(w) - 1)))
        self.head = UnetOutBlock(3, w[0], 1)
        # focal-loss prior initialisation (Lin et al.): start at p = 0.01, not 0.5, so the many background
        # voxels do not swamp the Jaccard term's gradient on the small tumour at the start of training
        nn.init.constant_(self.head.conv.conv.bias, -math.log((1.0 - TUMOUR_PRIOR) / TUMOUR_PRIOR))
        self.deep_channels = (w[-1], w[-2])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        deep = [x]
        for i, block in enumerate(self.decoder):
            x = block(x, skips[-2 - i])
            if i == 0:
                deep.append(x)
        return self.head(x), deep


def _stage_resnet(config: NetworkConfig) -> ResNet:
    """MONAI's 3D ResNet-50 without its classifier; with ``bot`` the 3×3×3 convolution of each of its last
    three bottleneck blocks becomes relative-position self-attention (the Bottleneck Transformer)."""
    w = config.stage_width
    stem_kernel, stem_stride = ((3, 7, 7), (1, 2, 2)) if config.thick_slices else (7, 2)
    net = ResNet("bottleneck", list(RESNET50_LAYERS), [w, 2 * w, 4 * w, 8 * w], spatial_dims=3,
                 n_input_channels=1, conv1_t_size=stem_kernel, conv1_t_stride=stem_stride, num_classes=1,
                 feed_forward=False, norm=GROUP_NORM)
    if config.bot:
        size_in, size_out = config.stage_sizes()
        for i, block in enumerate(net.layer4):
            stride = block.conv2.stride[0] if isinstance(block.conv2.stride, tuple) else block.conv2.stride
            block.conv2 = BottleneckAttention(block.conv2.in_channels, ATTENTION_HEADS,
                                              size_in if i == 0 else size_out, int(stride))
    return net


class NpcNetwork(nn.Module):
    """Segmentation and T-stage in one forward pass: ``(segmentation logits (B,1,…), stage logits (B,4))``."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.segmentation = UNet3d(config)
        self.stage = _stage_resnet(config)
        stage_channels = 8 * config.stage_width * 4  # bottleneck expansion 4
        self.fusion = None
        if config.fusion:
            _, size = config.stage_sizes()
            self.fusion = FeatureFusionAttention(stage_channels, self.segmentation.deep_channels,
                                                 2 * config.stage_width * 4, ATTENTION_HEADS, size)
        width = self.fusion.out_channels if self.fusion is not None else stage_channels
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(width, config.num_stages))

    @property
    def cam_layer(self) -> nn.Module:
        """What Grad-CAM of the stage explains: the staging branch's third stage, the finest feature map
        every path to the stage passes (the last stage is 1 × 7 × 7 voxels for the paper's crop, too
        coarse to point at a structure)."""
        return self.stage.layer3

    def stage_features(self, x: torch.Tensor) -> torch.Tensor:
        r = self.stage
        x = r.maxpool(r.act(r.bn1(r.conv1(x))))
        return r.layer4(r.layer3(r.layer2(r.layer1(x))))

    def segment(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The input padded to the U-Net's stride, its GTV logits on that grid and the deepest features."""
        size = image.shape[2:]
        pad = [p - n for p, n in zip(self.config.padded_size, size)]
        if any(p < 0 for p in pad):
            raise ValueError(f"input {tuple(size)} is larger than the network's patch {self.config.patch_size}")
        x = nn.functional.pad(image, [a for p in reversed(pad) for a in (0, p)])
        seg_logits, deep = self.segmentation(x)
        return x, seg_logits, deep

    def stage_logits(self, x: torch.Tensor, seg_logits: torch.Tensor, deep: list[torch.Tensor]) -> torch.Tensor:
        """T-stage logits of the padded input given the segmentation's outputs."""
        # the probability map gates the stage input as a mask without a gradient: through the gate the
        # classification loss drives the small-tumour map and the segmentation stops learning (measured on
        # two phantoms: no fall of the Jaccard + focal loss in 30 steps); the tasks still share gradients
        # through the fusion module
        stage_input = torch.sigmoid(seg_logits).detach() * x if self.config.gating else x
        features = self.stage_features(stage_input)
        if self.fusion is not None:
            features = self.fusion(features, deep)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool3d(features, 1), 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, seg_logits, deep = self.segment(image)
        logits = self.stage_logits(x, seg_logits, deep)
        return seg_logits[(..., *[slice(0, n) for n in image.shape[2:]])], logits

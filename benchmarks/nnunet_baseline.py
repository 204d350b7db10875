"""What the benchmarks share about their nnU-Net baseline: MONAI ``DynUNet`` with nnU-Net v2's default
choices (plain double-conv blocks, instance norm, LeakyReLU 0.01, deep supervision weighted 1, ½, ¼, …,
Dice + CE, SGD 0.01 Nesterov momentum 0.99 weight decay 3e-5, poly decay), nnU-Net's 2D topology rule,
the 3D plan on the training cases, and the hardware record.

Used by ``realdata_comparison.py`` and ``gtv_comparison.py``; imported as a sibling module (the
scripts put ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

#: nnU-Net v2 PolyLRScheduler / SGD defaults.
NNUNET_SGD = {"lr": 1e-2, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5}
#: nnU-Net v2's widths: 32 channels doubling per stage, capped at 320 (3D) or 512 (2D).
NNUNET_FEATURES = (32, 320)
NNUNET_FEATURES_2D = (32, 512)
#: nnU-Net pools an axis while its feature map stays at least this large.
MIN_FEATURE_MAP = 4
#: nnU-Net's poly exponent.
POLY_EXPONENT = 0.9


class DeepSupervisionList(nn.Module):
    """DynUNet stacks its deep-supervision outputs on dim 1 in training; the loss wants a list."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.net(x)
        return list(torch.unbind(out, dim=1)) if self.training and out.ndim == x.ndim + 1 else out


def dynunet(spatial_dims: int, in_channels: int, out_channels: int, kernel_sizes: Sequence[Sequence[int]],
            strides: Sequence[Sequence[int]], features: Sequence[int], outputs: int) -> nn.Module:
    """MONAI ``DynUNet`` as nnU-Net v2 configures its U-Net, with ``outputs`` deep-supervision outputs
    (full resolution + coarser ones), wrapped so that training returns them as a list."""
    from monai.networks.nets import DynUNet

    return DeepSupervisionList(DynUNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
        kernel_size=[list(k) for k in kernel_sizes], strides=[list(s) for s in strides],
        upsample_kernel_size=[list(s) for s in strides[1:]], filters=list(features),
        norm_name=("INSTANCE", {"affine": True}), act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        deep_supervision=outputs > 1, deep_supr_num=max(outputs - 1, 1), res_block=False))


def deep_supervision_outputs(stages: int, wanted: int = 4) -> int:
    """How many outputs deep supervision has: ``wanted`` (the engine's 4: full resolution and the next
    three, weighted 1, ½, ¼, ⅛), at most one per decoder level (MONAI's DynUNet: ``stages - 1``)."""
    return max(1, min(wanted, stages - 1))


def nnunet_loss(outputs: int) -> nn.Module:
    """Dice + CE (batch Dice, no background), weighted 1, ½, ¼, … over the deep-supervision outputs."""
    from monai.losses import DiceCELoss

    from engine.losses import DeepSupervisionLoss

    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True,
                         smooth_nr=1e-5, smooth_dr=1e-5)
    return DeepSupervisionLoss(dice_ce, weights=[0.5 ** i for i in range(outputs)])


def nnunet_sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, **NNUNET_SGD)


def poly_lr(progress: float, base: float = NNUNET_SGD["lr"]) -> float:
    """nnU-Net's poly decay at ``progress`` (0 → 1) of the run: ``base · (1 − progress)^0.9``."""
    return base * max(0.0, 1.0 - min(max(progress, 0.0), 1.0)) ** POLY_EXPONENT


def nnunet_2d_topology(size: int, features: Sequence[int] = NNUNET_FEATURES_2D
                       ) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """nnU-Net's rule for a square ``size``² 2D patch of isotropic pixels: 3×3 kernels everywhere, stride 1
    then stride 2 while the feature map stays ≥ 4 (so ``floor(log2(size / 4))`` poolings), widths
    ``base · 2^stage`` capped at ``max``. Returns (kernels, strides, features)."""
    if size < MIN_FEATURE_MAP:
        raise ValueError(f"a {size}² slice is smaller than nnU-Net's minimal feature map ({MIN_FEATURE_MAP}).")
    pools = math.floor(math.log2(size / MIN_FEATURE_MAP))
    strides = [[1, 1]] + [[2, 2]] * pools
    kernels = [[3, 3]] * len(strides)
    base, cap = int(features[0]), int(features[1])
    return kernels, strides, [min(base * 2 ** i, cap) for i in range(len(strides))]


def plan_3d(ds: Any, train_ids: set[str], task: str = "esophagus", target_spacing: Sequence[float] | None = None,
            patch: Sequence[int] | None = None, batch_size: int | None = None):
    """nnU-Net's 3d_fullres rules (the engine's planner) on the training cases only, normalisation
    statistics included; one resolution (no cascade)."""
    from engine.planning import extract_fingerprint, make_plan
    from engine.planning.planner import network_topology

    train_only = replace(ds, training=[c for c in ds.training if c.case_id in train_ids])
    plan = make_plan(extract_fingerprint(train_only), task, spacing=target_spacing if target_spacing else None)
    plan.configurations = {"3d_fullres": plan.configuration("3d_fullres")}
    cfg = plan.configuration("3d_fullres")
    if patch:
        cfg.network, cfg.patch_size = network_topology(list(patch), cfg.spacing, 320)
    if batch_size:
        cfg.batch_size = batch_size
    return plan


def hardware() -> dict[str, Any]:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info

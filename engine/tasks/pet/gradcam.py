"""Multi-scale Grad-CAM of the outcome: one class activation map per encoder level (3 to 5) from a single
forward and backward pass, and their mean.

Each level's map is ReLU(Σ_k w_k A_k) with w_k the spatial mean of ∂(outcome logit)/∂A_k, upsampled
trilinearly to the crop and divided by its maximum. The paper reads these maps per scale: the deeper
levels reach beyond the tumour into the peritumoral uptake the outcome depends on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.tasks.pet.networks import MULTI_SCALE_LEVELS, PetMultiTaskNet, PetOutputs


@dataclass
class MultiScaleCam:
    """The network's outputs for one crop, with the outcome's Grad-CAM per encoder level."""

    outputs: PetOutputs
    level_maps: dict[int, np.ndarray]   # level → (z, y, x) map in [0, 1], crop-sized
    combined: np.ndarray                # mean of the level maps, rescaled to [0, 1]


def level_cam(activation: torch.Tensor, gradient: torch.Tensor, size: tuple[int, ...]) -> np.ndarray:
    """Grad-CAM of one level for a batch of one, upsampled to ``size`` and max-normalised."""
    weights = gradient.mean(dim=(2, 3, 4), keepdim=True)
    cam = torch.relu((weights * activation).sum(dim=1, keepdim=True)).float()
    cam = nn.functional.interpolate(cam, size=size, mode="trilinear", align_corners=False)[0, 0]
    peak = float(cam.max())
    return (cam / peak).clamp(0, 1).cpu().numpy().astype(np.float32) if peak > 0 else np.zeros(size, np.float32)


def multi_scale_grad_cam(net: PetMultiTaskNet, x: torch.Tensor,
                         levels: tuple[int, ...] = MULTI_SCALE_LEVELS) -> MultiScaleCam:
    """Outputs and per-level Grad-CAM of the outcome logit for ``x`` (1, 1, crop); ``net`` stays in eval mode."""
    if x.shape[0] != 1:
        raise ValueError(f"multi-scale Grad-CAM explains one crop at a time, not {x.shape[0]}")
    captured: dict[int, torch.Tensor] = {}

    def hook(level: int):
        def record(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
            captured[level] = output
            return output
        return record

    handles = [net.encoder[level - 1].register_forward_hook(hook(level)) for level in levels]
    net.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            outputs = net(x.clone(), reconstruct=False)
            grads = torch.autograd.grad(outputs.outcome_logit.sum(), [captured[lv] for lv in levels],
                                        allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    size = tuple(int(s) for s in x.shape[2:])
    maps = {lv: (level_cam(captured[lv].detach(), g.detach(), size) if g is not None else np.zeros(size, np.float32))
            for lv, g in zip(levels, grads)}
    combined = np.mean(np.stack(list(maps.values())), axis=0)
    peak = float(combined.max())
    combined = combined / peak if peak > 0 else combined
    detached = PetOutputs(outputs.outcome_logit.detach(),
                          *(t.detach() if t is not None else None for t in (
                              outputs.segmentation_logits, outputs.reconstruction, outputs.pathology_logits)),
                          encoder_features=[])
    return MultiScaleCam(detached, maps, combined.astype(np.float32))

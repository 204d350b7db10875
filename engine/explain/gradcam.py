"""Grad-CAM (Selvaraju et al. 2017) for 2D and 3D classification networks.

Written by hand rather than with :class:`monai.visualize.GradCAM`, because MONAI's version (1.x):

- finds the layer by name and calls ``model(x, **kwargs)``, so a network whose classification path is
  a method (``NnMTNet.classify``, which feeds the segmentation encoder's features to the gates) needs
  a wrapper module and layer names rewritten for it;
- registers its hooks in the constructor and never removes them, and sets ``inplace = False`` on the
  target layer for good: the model is changed for everything that runs after it;
- calls ``.backward()``, which leaves ``.grad`` on every parameter, and puts every submodule back in
  train mode afterwards even if some were frozen in eval mode.

Here one forward hook records the target layer's output A and ``torch.autograd.grad`` gives ∂score/∂A
directly, so no parameter gradient is touched, the hook is removed in ``finally``, and each
submodule's own train/eval flag is restored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


@dataclass
class GradCamResult:
    """A class activation map and the prediction it explains."""

    cam: np.ndarray  #: float32 in [0, 1], shape ``output_size`` (no batch or channel axis)
    class_index: int  #: the class whose score was explained
    probabilities: np.ndarray  #: softmax of ``logits``, float32, one per class
    logits: np.ndarray  #: raw network outputs for the sample, float32


def grad_cam(
    model: nn.Module,
    target_layer: nn.Module,
    inputs: tuple | torch.Tensor,
    class_index: int | None = None,
    forward: Callable[..., torch.Tensor] | None = None,
    output_size: Sequence[int] | None = None,
) -> GradCamResult:
    """Grad-CAM of one sample: ReLU(Σ_k w_k A_k) with w_k the spatial mean of ∂score/∂A_k.

    ``inputs`` is one tensor or a tuple of arguments for ``forward`` (default: ``model``), e.g.
    ``forward=net.classify``; the first tensor argument sets the batch (must be 1) and the default
    ``output_size`` (its spatial shape). ``class_index`` defaults to the predicted class. The map is
    upsampled (bi/trilinear) to ``output_size`` and divided by its maximum, so 1 is the strongest
    evidence and a map without positive evidence stays all zero. The model is run in eval mode and
    left exactly as it was (modes, hooks, parameter gradients).
    """
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    reference = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if reference is None or reference.ndim < 3:
        raise ValueError("grad_cam needs at least one input tensor shaped (batch, channels, *spatial)")
    if reference.shape[0] != 1:
        raise ValueError(f"grad_cam explains one sample at a time; got a batch of {reference.shape[0]}")
    spatial_dims = reference.ndim - 2
    size = tuple(int(s) for s in (output_size if output_size is not None else reference.shape[2:]))
    if len(size) != spatial_dims:
        raise ValueError(f"output_size {size} must have {spatial_dims} dimensions like the input")
    run = forward if forward is not None else model

    captured: list[torch.Tensor] = []

    def record_activation(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"Grad-CAM target layer must return a tensor, got {type(output).__name__}")
        # A frozen layer's output has no graph; make it a root so ∂score/∂A still exists.
        activation = output if output.requires_grad else output.detach().requires_grad_(True)
        captured.append(activation)
        # Hand a copy downstream so in-place ops there (ReLU(inplace=True)) cannot overwrite A.
        return activation.clone()

    modes = {module: module.training for module in model.modules()}
    handle = target_layer.register_forward_hook(record_activation)
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            args = tuple(a.clone() if isinstance(a, torch.Tensor) and a.is_inference() else a for a in args)
            logits = run(*args)
            if not captured:
                raise ValueError("the target layer was not called by the forward pass; pick a layer on "
                                 "the classification path")
            if len(captured) > 1:
                log.debug("target layer ran %d times in one forward; using its last output", len(captured))
            activation = captured[-1]
            logits = _single_sample_logits(logits)
            chosen = int(torch.argmax(logits)) if class_index is None else int(class_index)
            if not 0 <= chosen < logits.numel():
                raise ValueError(f"class_index {chosen} is outside 0..{logits.numel() - 1}")
            gradient = _gradient(logits[chosen], activation)
        cam = _class_activation_map(activation.detach(), gradient, size)
    finally:
        handle.remove()
        for module, was_training in modes.items():
            module.train(was_training)

    logits = logits.detach().float()
    return GradCamResult(
        cam=cam,
        class_index=chosen,
        probabilities=torch.softmax(logits, dim=0).cpu().numpy().astype(np.float32),
        logits=logits.cpu().numpy().astype(np.float32),
    )


def _single_sample_logits(logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 1:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"forward must return logits shaped (1, num_classes); got {shape}")
    return logits[0]


def _gradient(score: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """∂score/∂A without touching parameter ``.grad``; zero where the score does not depend on A."""
    if not score.requires_grad:
        return torch.zeros_like(activation)
    (gradient,) = torch.autograd.grad(score, activation, allow_unused=True)
    return torch.zeros_like(activation) if gradient is None else gradient.detach()


def _class_activation_map(activation: torch.Tensor, gradient: torch.Tensor, size: tuple[int, ...]) -> np.ndarray:
    spatial_axes = tuple(range(2, activation.ndim))
    weights = gradient.mean(dim=spatial_axes, keepdim=True)
    cam = torch.relu((weights * activation).sum(dim=1, keepdim=True)).float()
    if tuple(cam.shape[2:]) != size:
        cam = F.interpolate(cam, size=size, mode=_INTERPOLATION[len(size)], align_corners=False)
    cam = cam[0, 0]
    if not bool(torch.isfinite(cam).all()):
        raise ValueError("Grad-CAM is not finite: the network produced NaN or infinite activations")
    peak = float(cam.max())
    if peak <= 0.0:
        return np.zeros(size, dtype=np.float32)
    return (cam / peak).clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)


def paste_into_volume(cam_crop: np.ndarray, box_start: Sequence[int], full_shape: Sequence[int]) -> np.ndarray:
    """Place a crop-sized map at ``box_start`` in a zero volume of ``full_shape``.

    The crop box may reach outside the volume (a KRT box padded at the border): only the overlapping
    part is copied, the rest of the crop is dropped.
    """
    crop = np.asarray(cam_crop)
    start = [int(s) for s in box_start]
    shape = tuple(int(s) for s in full_shape)
    if not (crop.ndim == len(start) == len(shape)):
        raise ValueError(f"crop ({crop.ndim}D), box_start ({len(start)}) and full_shape ({len(shape)}) "
                         "must have the same number of dimensions")
    volume = np.zeros(shape, dtype=crop.dtype)
    target, source = [], []
    for begin, length, extent in zip(start, crop.shape, shape):
        lo, hi = max(begin, 0), min(begin + length, extent)
        if hi <= lo:
            return volume  # box entirely outside the volume
        target.append(slice(lo, hi))
        source.append(slice(lo - begin, hi - begin))
    volume[tuple(target)] = crop[tuple(source)]
    return volume

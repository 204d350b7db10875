"""Segment a CT volume with a GTV bundle: slice classifier → SANet on the kept slices → 3D label map.

Per volume: preprocess to body-cropped, resized, normalised axial slices; the classifier gives each
slice the probability that it holds GTV; SANet segments only the slices at or above the plan's
threshold (the others are all background — the cascade's guard against false positives on normal
slices); the stacked result and the classifier's Grad-CAM go back to the input's exact voxel grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.inference.volumes import structure_volumes_cm3
from engine.io.image import Image
from engine.pipelines.case import Prediction, StepTimer
from engine.preprocessing.orientation import reorientation
from engine.registry import ModelBundle
from engine.tasks.base import CancelFn, ProgressFn
from engine.tasks.gtv.networks import (
    build_classifier,
    build_resformer,
    build_segmenter,
    gradcam_layer,
    split_outputs,
)
from engine.tasks.gtv.options import CLASSIFIER, RESFORMER, SEGMENTER
from engine.tasks.gtv.preprocessing import GtvPlan, SlicePreprocessor, SliceRecord
from engine.utils.device import describe_device, select_device

log = logging.getLogger(__name__)

INFERENCE_STEPS = ("preprocess", "classification", "segmentation", "gradcam", "restore")
BATCH = 16


@dataclass
class GtvPrediction(Prediction):
    """The label map plus, per input slice, the classifier's GTV probability and which slices SANet segmented."""

    slice_probabilities: list[float] = field(default_factory=list)
    slices_kept: list[int] = field(default_factory=list)
    slice_threshold: float = 0.5
    #: the input volume, for the task's overview figure (not part of the report)
    image: Image | None = field(default=None, repr=False, compare=False)

    def report_fields(self) -> dict[str, Any]:
        return {**super().report_fields(), "slice_probabilities": [round(p, 5) for p in self.slice_probabilities],
                "slices_kept": self.slices_kept, "slice_threshold": self.slice_threshold}


def batched_grad_cam(layer: nn.Module, x: torch.Tensor, forward: Any, class_index: int = 1) -> np.ndarray:
    """Grad-CAM of ``class_index`` for a batch of slices in one backward pass, each map as
    :func:`engine.explain.gradcam.grad_cam` makes it (ReLU of the gradient-weighted activations, bilinear to
    the slice size, divided by its maximum). In eval mode a slice's score depends on its own activations
    only, so the gradient of the summed scores is every slice's own gradient."""
    captured: list[torch.Tensor] = []

    def record(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        activation = output if output.requires_grad else output.detach().requires_grad_(True)
        captured.append(activation)
        return activation.clone()

    handle = layer.register_forward_hook(record)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            logits = forward(x.clone())
            activation = captured[-1]
            (gradient,) = torch.autograd.grad(logits[:, class_index].sum(), activation, allow_unused=True)
    finally:
        handle.remove()
    if gradient is None:
        return np.zeros((x.shape[0], *x.shape[2:]), dtype=np.float32)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation.detach()).sum(dim=1, keepdim=True)).float()
    cam = nn.functional.interpolate(cam, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2), keepdim=True)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam)).clamp_(0.0, 1.0)
    return cam.detach().cpu().numpy().astype(np.float32)


class GtvPredictor:
    """A loaded GTV bundle; :meth:`predict` runs on any number of CT volumes."""

    def __init__(self, bundle: ModelBundle, device: str = "auto"):
        self.bundle = bundle
        self.device = select_device(device)
        self.plan = GtvPlan.from_dict(bundle.plan)
        self.pre = SlicePreprocessor(self.plan)
        arch = bundle.architecture
        self.classifier: nn.Module | None = None
        self.segmenter: nn.Module | None = None
        self.resformer: nn.Module | None = None
        if arch.get("architecture") == "resformer":
            self.resformer = self._load(build_resformer(arch["resformer"]), RESFORMER)
        else:
            if arch.get("classifier"):
                self.classifier = self._load(build_classifier(arch["classifier"]), CLASSIFIER)
            self.segmenter = self._load(build_segmenter(arch["segmenter"]), SEGMENTER)

    def _load(self, net: nn.Module, name: str) -> nn.Module:
        net.load_state_dict(self.bundle.load_state_dict(name))
        return net.to(self.device).eval()

    def _batches(self, x: np.ndarray, indices: np.ndarray):
        for start in range(0, len(indices), BATCH):
            chunk = indices[start:start + BATCH]
            yield chunk, torch.from_numpy(x[chunk][:, None]).to(self.device)

    @torch.no_grad()
    def slice_probabilities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-slice GTV probability, and (ResFormer) the segmentation probabilities of every slice."""
        n = x.shape[0]
        if self.classifier is None and self.resformer is None:
            return np.ones(n, dtype=np.float32), None
        probs = np.zeros(n, dtype=np.float32)
        seg = np.zeros(x.shape, dtype=np.float32) if self.resformer is not None else None
        for chunk, t in self._batches(x, np.arange(n)):
            if self.resformer is not None:
                seg_logits, cls_logits = split_outputs(self.resformer(t))
                seg[chunk] = torch.softmax(seg_logits.float(), 1)[:, 1].cpu().numpy()  # type: ignore[index]
            else:
                cls_logits = self.classifier(t)  # type: ignore[misc]
            probs[chunk] = torch.softmax(cls_logits.float(), 1)[:, 1].cpu().numpy()
        return probs, seg

    @torch.no_grad()
    def segment_slices(self, x: np.ndarray, kept: np.ndarray) -> np.ndarray:
        """SANet's foreground probability on the kept slices; 0 elsewhere."""
        out = np.zeros(x.shape, dtype=np.float32)
        for chunk, t in self._batches(x, kept):
            logits, _ = split_outputs(self.segmenter(t))  # type: ignore[misc]
            out[chunk] = torch.softmax(logits.float(), 1)[:, 1].cpu().numpy()
        return out

    def gradcam(self, x: np.ndarray, kept: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
        """The slice classifier's Grad-CAM (class "GTV present") on each kept slice, 0 elsewhere.

        Each slice's map (normalised to its own peak) is scaled by the slice's GTV probability, so a
        doubtful slice does not glow as brightly as a certain one, and kept to the body: the coarse
        deepest feature map spreads activation into the air around the patient, where no evidence is."""
        net = self.classifier if self.classifier is not None else self.resformer
        if net is None:
            return None
        try:
            layer = gradcam_layer(net)
        except AttributeError as exc:
            log.warning("No Grad-CAM: %s", exc)
            return None
        forward = (lambda t: net(t)) if net is self.classifier else (lambda t: split_outputs(net(t))[1])
        cams = np.zeros(x.shape, dtype=np.float32)
        body_floor = self.pre.normalise(np.float32(self.plan.body_threshold_hu))
        for chunk, t in self._batches(x, kept):
            cam = batched_grad_cam(layer, t, forward) * probs[chunk, None, None]
            cams[chunk] = np.where(x[chunk] > body_floor, cam, 0.0)
        return cams

    def reference_slices(self, image: Image, reference: np.ndarray) -> np.ndarray:
        """Whether each slice of a reference label map holds GTV, in the order of ``slice_probabilities``."""
        reo = reorientation(image, self.plan.orientation)
        flags = reo.to_canonical(reference > 0).reshape(image.shape[reo.axes[0]], -1).any(axis=1)
        return flags[::-1].copy() if reo.axes[0] == 0 and reo.flips[0] else flags

    def predict(self, image: Image, gradcam: bool = True, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, threshold: float | None = None, **options: Any) -> GtvPrediction:
        timer = StepTimer(progress, cancel, INFERENCE_STEPS)
        thr = float(self.plan.threshold if threshold is None else threshold)
        with timer.step("preprocess"):
            x, record = self.pre(image)
        with timer.step("classification"):
            probs, seg = self.slice_probabilities(x)
            kept = np.flatnonzero(probs >= thr)
        with timer.step("segmentation"):
            if seg is None:
                seg = self.segment_slices(x, kept)
            else:
                seg[probs < thr] = 0.0
        cams = None
        if gradcam:
            with timer.step("gradcam"):
                cams = self.gradcam(x, kept, probs)
        with timer.step("restore"):
            fg = self.pre.restore_probabilities(seg, record)
            labels = (fg >= 0.5).astype(np.uint8)
            cam = self.pre.restore_probabilities(cams, record) if cams is not None else None
        return self._prediction(image, labels, cam, probs, kept, record, thr, timer)

    def _prediction(self, image: Image, labels: np.ndarray, cam: np.ndarray | None, probs: np.ndarray,
                    kept: np.ndarray, record: SliceRecord, thr: float, timer: StepTimer) -> GtvPrediction:
        warnings = []
        if record.reorientation.axes[0] != 0:
            warnings.append("The input's first voxel axis is not axial; slice probabilities are listed from "
                            "inferior to superior.")
            order = np.arange(len(probs))
        else:
            order = record.input_slice_order()
        position = np.empty_like(order)
        position[order] = np.arange(len(order))
        if self.classifier is None and self.resformer is None:
            warnings.append("This model has no slice classifier (ablation): every slice was segmented.")
        return GtvPrediction(
            labels=image.with_array(labels),
            gradcam=image.with_array(np.clip(cam, 0.0, 1.0).astype(np.float32)) if cam is not None else None,
            volumes_cm3=structure_volumes_cm3(labels, image.spacing, {1: "GTV"}),
            warnings=warnings, timings_s=timer.timings, device=describe_device(self.device),
            slice_probabilities=[float(p) for p in probs[order]],
            slices_kept=sorted(int(position[k]) for k in kept), slice_threshold=thr, image=image)

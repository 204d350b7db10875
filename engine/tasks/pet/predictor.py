"""Segment & Predict one PET with a PET outcome bundle.

canonical orientation + 2 mm grid → tumour segmentation of the whole volume (one pass; overlapping
windows for very large volumes) → largest connected component → crop centred on it → outcome and
pathology probabilities with the multi-scale Grad-CAM → label map and heat map back on the input's
voxel grid → SUVmax/SUVmean/SUVpeak/MTV/TLG measured there, on the input's own SUV values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from engine.explain.gradcam import paste_into_volume
from engine.io.image import Image
from engine.pipelines.case import Prediction, StepTimer
from engine.registry import ModelBundle
from engine.tasks.base import CancelFn, ProgressFn
from engine.tasks.pet.gradcam import multi_scale_grad_cam
from engine.tasks.pet.networks import DEPTH, MULTI_SCALE_LEVELS, PetMultiTaskNet, build_network
from engine.tasks.pet.options import NETWORK, OUTCOMES, PATHOLOGIES
from engine.tasks.pet.preprocessing import box_start, crop, mask_centre, prepare
from engine.tasks.pet.uptake import uptake_figures
from engine.utils.device import describe_device, select_device

log = logging.getLogger(__name__)

INFERENCE_STEPS = ("preprocess", "segmentation", "outcome", "restore")
#: Volumes up to this many voxels (2 mm grid) are segmented in one pass; larger ones in windows.
WHOLE_VOLUME_VOXELS = 6_000_000
NO_TUMOUR_WARNING = ("No tumour was found (no voxel reached the model's tumour threshold); the outcome and "
                     "pathology were predicted on a crop centred on the most likely voxel and are unreliable.")


@dataclass
class PetPrediction(Prediction):
    """The label map plus the uptake figures, pathology and outcome probabilities of the tumour."""

    uptake: dict[str, float] | None = None
    pathology_probabilities: dict[str, float] = field(default_factory=dict)
    predicted_pathology: str | None = None
    outcome_probabilities: dict[str, float] = field(default_factory=dict)
    predicted_outcome: str | None = None
    gradcam_levels: list[int] = field(default_factory=list)
    suv_conversion: dict[str, Any] | None = None

    def report_fields(self) -> dict[str, Any]:
        return {**super().report_fields(), "uptake": self.uptake,
                "pathology_probabilities": self.pathology_probabilities,
                "predicted_pathology": self.predicted_pathology,
                "outcome_probabilities": self.outcome_probabilities, "predicted_outcome": self.predicted_outcome,
                "gradcam_levels": self.gradcam_levels, "suv_conversion": self.suv_conversion}


@torch.no_grad()
def whole_volume_probability(net: PetMultiTaskNet, suv: np.ndarray, device: torch.device) -> np.ndarray:
    """Tumour probability on the 2 mm grid: one pass padded to the network's stride, or windows."""
    if net.segmentation is None:
        return np.zeros(suv.shape, dtype=np.float32)
    x = torch.from_numpy(suv / net.spec.suv_scale).float()[None, None].to(device)
    if suv.size > WHOLE_VOLUME_VOXELS:
        window = [2 * s for s in net.spec.crop_size]
        logits = sliding_window_inference(x, window, 1, net.segment, overlap=0.25, mode="gaussian")
    else:
        stride = 2 ** (DEPTH - 1)
        pad = [(-n) % stride for n in suv.shape]
        padded = torch.nn.functional.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        logits = net.segment(padded)[..., :suv.shape[0], :suv.shape[1], :suv.shape[2]]
    return torch.sigmoid(logits.float())[0, 0].cpu().numpy()


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary mask (the one tumour the task describes)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


class PetPredictor:
    """A loaded PET outcome bundle; :meth:`predict` runs on any number of PET volumes in SUV."""

    def __init__(self, bundle: ModelBundle, device: str = "auto"):
        self.bundle = bundle
        self.device = select_device(device)
        self.net: PetMultiTaskNet = build_network(bundle.architecture)
        self.net.load_state_dict(bundle.load_state_dict(NETWORK))
        self.net.to(self.device).eval()
        self.spec = self.net.spec
        self.plan = dict(bundle.plan)  # the task's own geometry (2 mm, crop), not a segmentation Plan
        #: the operating point chosen on the validation cases (:mod:`engine.tasks.pet.threshold`)
        self.threshold = float(self.plan.get("segmentation_threshold", 0.5))
        self.pathologies = list(bundle.plan.get("pathologies", PATHOLOGIES))

    def _input(self, suv: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(suv / self.spec.suv_scale).float()[None, None].to(self.device)

    def tumour_probability(self, suv: np.ndarray) -> np.ndarray:
        return whole_volume_probability(self.net, suv, self.device)

    def predict(self, image: Image, gradcam: bool = True, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, **options: Any) -> PetPrediction:
        timer = StepTimer(progress, cancel, INFERENCE_STEPS)
        warnings: list[str] = []
        with timer.step("preprocess"):
            prepared = prepare(image)
        with timer.step("segmentation"):
            probability = self.tumour_probability(prepared.suv)
            tumour = largest_component(probability >= self.threshold)
            centre = mask_centre(tumour)
            if centre is None:
                warnings.append(NO_TUMOUR_WARNING)
                centre = np.unravel_index(int(np.argmax(probability * prepared.suv)), probability.shape)
        with timer.step("outcome"):
            start = box_start(centre, self.spec.crop_size)
            x = self._input(crop(prepared.suv, start, self.spec.crop_size))
            explained = multi_scale_grad_cam(self.net, x) if gradcam else None
            outputs = explained.outputs if explained is not None else self._outputs(x)
        with timer.step("restore"):
            labels = (prepared.to_input(tumour.astype(np.float32)) >= 0.5).astype(np.uint8)
            cam = None
            if explained is not None:
                full = paste_into_volume(explained.combined, start, prepared.suv.shape)
                cam = np.clip(prepared.to_input(full), 0.0, 1.0).astype(np.float32)
        return self._prediction(image, labels, cam, outputs, warnings, timer, gradcam)

    @torch.no_grad()
    def _outputs(self, x: torch.Tensor) -> Any:
        return self.net(x, reconstruct=False)

    def _prediction(self, image: Image, labels: np.ndarray, cam: np.ndarray | None, outputs: Any,
                    warnings: list[str], timer: StepTimer, gradcam: bool) -> PetPrediction:
        poor = float(torch.sigmoid(outputs.outcome_logit.float())[0])
        outcome = {OUTCOMES[0]: round(1.0 - poor, 5), OUTCOMES[1]: round(poor, 5)}
        pathology: dict[str, float] = {}
        if outputs.pathology_logits is not None:
            probs = torch.softmax(outputs.pathology_logits.float(), 1)[0].cpu().numpy()
            pathology = {name: round(float(p), 5) for name, p in zip(self.pathologies, probs)}
        figures = uptake_figures(image.array, labels > 0, image.spacing)
        volume = figures.mtv_ml if figures is not None else 0.0
        return PetPrediction(
            labels=image.with_array(labels), gradcam=image.with_array(cam) if cam is not None else None,
            volumes_cm3={"tumour": volume}, warnings=warnings, timings_s=timer.timings,
            device=describe_device(self.device), uptake=figures.to_dict() if figures is not None else None,
            pathology_probabilities=pathology,
            predicted_pathology=max(pathology, key=pathology.__getitem__) if pathology else None,
            outcome_probabilities=outcome, predicted_outcome=max(outcome, key=outcome.__getitem__),
            gradcam_levels=list(MULTI_SCALE_LEVELS) if gradcam else [])

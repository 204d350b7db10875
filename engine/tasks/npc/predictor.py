"""Segment & Stage with a loaded NPC bundle: one forward pass of the head crop gives the GTV probability
map and the T1–T4 probabilities; Grad-CAM explains the predicted stage; everything goes back to the
input's own voxel grid (any storage orientation: the preprocessing reorders and restores exactly).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine.errors import EngineError, ImageError
from engine.explain.gradcam import grad_cam
from engine.inference.volumes import structure_volumes_cm3
from engine.io.image import Image
from engine.pipelines.case import Prediction, StepTimer
from engine.planning.planner import Plan
from engine.preprocessing.pipeline import Preprocessor
from engine.registry import ModelBundle
from engine.tasks.base import CancelFn, ProgressFn
from engine.tasks.npc import TASK, TUMOUR
from engine.tasks.npc.data import PreparedVolume, prepare
from engine.tasks.npc.networks import NetworkConfig, NpcNetwork
from engine.tasks.npc.options import NETWORK
from engine.utils.device import describe_device, select_device

INFERENCE_STEPS = ("preprocess", "network", "gradcam", "restore")
#: Modalities whose images this model must not stage (it was trained on contrast-enhanced T1 MRI).
REFUSED_MODALITIES = {"CT": "a CT", "PT": "a PET", "PET": "a PET", "NM": "a nuclear-medicine image"}
#: Share of voxels at or below -500 from which a volume is taken for a CT in Hounsfield units (air).
CT_AIR_FRACTION = 0.005


def check_mri(image: Image) -> None:
    """Refuse what cannot be an MRI: a CT or PET by its DICOM modality, or a CT by its HU range (air at
    -1000 HU; MR magnitudes are never far below zero)."""
    modality = (image.modality or "").upper()
    if modality in REFUSED_MODALITIES:
        raise ImageError(f"NPCStaging needs a contrast-enhanced T1 MRI, but the input is {REFUSED_MODALITIES[modality]} "
                         f"(modality '{image.modality}'). Choose the MRI series of the patient.")
    a = image.array
    air = float(np.mean(a <= -500))
    if air >= CT_AIR_FRACTION:
        raise ImageError(f"The input looks like a CT in Hounsfield units ({100 * air:.1f} % of voxels at air values "
                         f"≤ -500, minimum {float(a.min()):.0f}), not an MRI. NPCStaging needs a contrast-enhanced "
                         "T1 MRI of the nasopharynx.")


class NpcPredictor:
    """Loads an NPCStaging bundle once; :meth:`predict` runs Segment & Stage on any number of MRIs."""

    def __init__(self, bundle: ModelBundle, device: str = "auto"):
        if bundle.task != TASK.name:
            raise EngineError(f"Model '{bundle.id}' is for task '{bundle.task}', not '{TASK.name}'; choose an "
                              "NPCStaging model.")
        self.bundle = bundle
        self.device = select_device(device)
        self.plan = Plan.from_dict(bundle.plan)
        self.config = NetworkConfig.from_dict(bundle.architecture["network"])
        self.net = NpcNetwork(self.config)
        self.net.load_state_dict(bundle.load_state_dict(NETWORK))
        self.net.to(self.device).eval()
        self.stage_names = list(bundle.stages or TASK.stage_names or ())

    def forward(self, prepared: PreparedVolume) -> tuple[np.ndarray, np.ndarray, tuple]:
        """GTV probability map of the crop, stage probabilities, and what Grad-CAM starts from."""
        x = torch.from_numpy(prepared.image[None]).to(self.device)
        with torch.no_grad():
            padded, seg_logits, deep = self.net.segment(x)
            stage_logits = self.net.stage_logits(padded, seg_logits, deep)
        crop = tuple(slice(0, n) for n in x.shape[2:])
        probability = torch.sigmoid(seg_logits.float())[(0, 0, *crop)].cpu().numpy()
        stages = torch.softmax(stage_logits.float(), 1)[0].cpu().numpy().astype(np.float64)
        return probability, stages / stages.sum(), (padded, seg_logits, deep)

    def gradcam(self, segmented: tuple, stage_index: int, size: tuple[int, ...]) -> np.ndarray:
        """Grad-CAM of ``stage_index`` on the crop (0–1). Only the staging branch runs again: the
        segmentation's outputs are constants for it (the gate carries no gradient)."""
        padded, seg_logits, deep = segmented
        result = grad_cam(self.net, self.net.cam_layer, (padded,), class_index=stage_index,
                          forward=lambda t: self.net.stage_logits(t, seg_logits, deep))
        return result.cam[tuple(slice(0, n) for n in size)]

    def predict(self, image: Image, gradcam: bool = True, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, **options: Any) -> Prediction:
        check_mri(image)
        timer = StepTimer(progress, cancel, INFERENCE_STEPS)
        with timer.step("preprocess"):
            prepared = prepare(self.plan, image)
        with timer.step("network"):
            probability, stages, segmented = self.forward(prepared)
        predicted = int(np.argmax(stages))
        cam = None
        if gradcam:
            with timer.step("gradcam"):
                cam = self.gradcam(segmented, predicted, prepared.image.shape[1:])
        with timer.step("restore"):
            record, crop = prepared.record, prepared.crop
            foreground = crop.paste(probability)
            restored = Preprocessor.restore_probabilities(np.stack([1.0 - foreground, foreground]), record)[1]
            labels = (restored >= 0.5).astype(np.uint8)
            cam_image = None
            if cam is not None:
                cam_map = np.clip(Preprocessor.restore_map(crop.paste(cam), record), 0.0, 1.0)
                peak = float(cam_map.max())
                cam_image = image.with_array((cam_map / peak if peak > 0 else cam_map).astype(np.float32))
        warnings = [] if labels.any() else [f"No {TUMOUR} was found; the T-stage is unreliable."]
        return Prediction(
            labels=image.with_array(labels), gradcam=cam_image,
            volumes_cm3=structure_volumes_cm3(labels, image.spacing, {1: TUMOUR}),
            stage_probabilities={s: float(p) for s, p in zip(self.stage_names, stages)},
            predicted_stage=self.stage_names[predicted], warnings=warnings, timings_s=timer.timings,
            device=describe_device(self.device))

"""Segment & Stage with a loaded nn-TransEC bundle: cascade segmentation, KRT crop, stage, Grad-CAM.

:class:`EsophagusPredictor` loads a bundle once and runs on any number of CT volumes; everything it
returns is in the input's original geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from engine.errors import EngineError, ImageError
from engine.explain.gradcam import grad_cam, paste_into_volume
from engine.inference.krt import KrtBox, box_around, crop_box, krt_box
from engine.inference.sliding_window import SlidingWindowPredictor
from engine.inference.tta import mirrored_class_probabilities
from engine.inference.volumes import structure_volumes_cm3
from engine.io.image import Image
from engine.models.nn_mtnet import ClassifierOptions, NetworkSpec, NnMTNet, SegmentationNet
from engine.pipelines.case import Prediction, StepTimer
from engine.planning.planner import Plan, roi_margin_mm
from engine.inference.roi import CascadeRegion, cascade_region
from engine.preprocessing.crop import unpad
from engine.preprocessing.pipeline import GridIndependentWork, PreprocessedCase, Preprocessor, PreprocessRecord
from engine.registry import ModelBundle
from engine.tasks.base import CancelFn, ProgressFn, check_tta
from engine.tasks.esophagus import ORGAN_OF_ORIGIN, STAGES, TASK, TUMOUR
from engine.tasks.esophagus.networks import keep_largest_object, lowres_to_fullres, outside_values
from engine.tasks.esophagus.options import (CLASSIFIER_MIRROR_AXES, FULLRES, LOWRES, SEGMENTATION_MIRROR_AXES,
                                            classifier_weight_names)
from engine.utils.device import describe_device, select_device

INFERENCE_STEPS = ("preprocess", "segmentation_lowres", "preprocess_fullres", "segmentation_fullres",
                   "postprocess", "krt", "classification", "gradcam", "restore")
#: The order of this task's fields in ``report.json``.
REPORT_ORDER = ("stage_probabilities", "member_stage_probabilities", "predicted_stage", "stage_reliable",
                "volumes_cm3", "krt_box", "warnings", "domain", "timings_s", "device", "test_time_augmentation",
                "full_resolution_region")


@dataclass
class EsophagusPrediction(Prediction):
    """Segment & Stage output, in the input's original geometry, with where the classifier looked."""

    krt_box: dict[str, Any] = field(default_factory=dict)
    test_time_augmentation: dict[str, str] = field(default_factory=dict)
    #: an ensemble's members' own probabilities (``stage_probabilities`` is their mean); empty otherwise
    member_stage_probabilities: list[dict[str, float]] = field(default_factory=list)
    #: where the full-resolution stage ran (:func:`describe_region`)
    full_resolution_region: dict[str, Any] = field(default_factory=dict)

    def report_fields(self) -> dict[str, Any]:
        fields = {**super().report_fields(), "krt_box": self.krt_box,
                  "test_time_augmentation": self.test_time_augmentation,
                  "full_resolution_region": self.full_resolution_region}
        if self.member_stage_probabilities:
            fields["member_stage_probabilities"] = self.member_stage_probabilities
        return {k: fields[k] for k in REPORT_ORDER if k in fields}


def describe_tta(tta: str) -> dict[str, str]:
    """What test-time augmentation a run used, for report.json and the evaluation header."""
    n_cls, n_seg = 2 ** len(CLASSIFIER_MIRROR_AXES), 1 + len(SEGMENTATION_MIRROR_AXES)
    return {"stage_classification": f"mean over {n_cls} in-plane mirrorings" if tta != "none" else "none",
            "segmentation": f"mean over the window and its {n_seg - 1} single-axis mirrorings" if tta == "all"
            else "none"}


def check_ct_intensities(image: Image) -> None:
    """Refuse volumes that cannot be CT in HU: a thoracic CT holds air/lung (≤ -500 HU) and nothing
    below -1100 or above a few thousand HU. MR and PET (positive, arbitrary units) fail here."""
    if image.modality and image.modality.upper() not in ("CT",):
        raise ImageError(f"This model needs a CT volume, but the input's modality is '{image.modality}'.")
    a = image.array
    lo, hi = float(np.percentile(a, 0.5)), float(a.max())
    air_fraction = float(np.mean(a <= -500))
    if lo < -1100 - 1e-3 and float(np.percentile(a, 5)) < -1100:
        raise ImageError(f"Intensities go down to {lo:.0f}, far below air (-1000 HU): the volume is not in "
                         "Hounsfield units (apply the DICOM rescale slope/intercept, or choose a CT volume).")
    if air_fraction < 0.005 or hi > 40000:
        raise ImageError(f"The input does not look like a CT in Hounsfield units (only {100 * air_fraction:.2f} % "
                         f"of voxels at air/lung values ≤ -500 HU, range {lo:.0f}..{hi:.0f}). EsophagusStaging "
                         "needs a thoracic CT in HU; MR or PET volumes cannot be staged with this model.")


def describe_region(region: CascadeRegion | None) -> dict[str, Any]:
    """The full-resolution region for report.json: its box on the full-resolution grid and its share."""
    if region is None:
        return {"restricted": False}
    return {"restricted": not region.is_whole_grid, "box_voxels_zyx": region.box,
            "grid_shape_zyx": region.grid_shape, "fraction_of_grid": round(region.fraction, 4)}


def krt_box_physical(box: KrtBox, record: PreprocessRecord) -> dict[str, Any]:
    """The KRT box's corners in patient coordinates (LPS, mm) and its size in mm."""
    direction = np.asarray(record.direction).reshape(3, 3)
    origin = np.asarray(record.grid_origin())
    spacing_xyz = np.asarray(record.target_spacing)[::-1]

    def to_physical(index_zyx: Sequence[float]) -> list[float]:
        ijk = np.asarray([i - p[0] for i, p in zip(index_zyx, record.pads)], dtype=np.float64)[::-1]
        return [round(float(v), 3) for v in origin + direction @ (ijk * spacing_xyz)]

    last = [s + n - 1 for s, n in zip(box.start, box.size)]
    return {"centred_on": box.source, "first_corner_lps_mm": to_physical(box.start),
            "last_corner_lps_mm": to_physical(last),
            "size_mm": [round(float(n * s), 2) for n, s in zip(box.size, record.target_spacing)][::-1],
            "size_voxels": list(box.size)[::-1]}


@dataclass
class Segmented:
    """The cascade's result on the full-resolution grid: what staging and restoring start from."""

    full: PreprocessedCase
    seg_input: np.ndarray  # CT and cascade prior, the full-resolution network's input
    labels: np.ndarray
    device: torch.device
    warnings: list[str]
    region: CascadeRegion | None = None


class EsophagusPredictor:
    """Loads an EsophagusStaging bundle once; :meth:`predict` runs Segment & Stage on a CT volume."""

    def __init__(self, bundle: ModelBundle, device: str = "auto"):
        if bundle.task != TASK.name:
            raise EngineError(f"Model '{bundle.id}' is for task '{bundle.task}', not '{TASK.name}'; choose an "
                              "EsophagusStaging model.")
        self.bundle = bundle
        self.device = select_device(device)
        arch = bundle.architecture
        self.plan = Plan.from_dict(bundle.plan)
        spec_low, spec_full = NetworkSpec.from_dict(arch["lowres"]), NetworkSpec.from_dict(arch["fullres"])
        self.low_net = SegmentationNet(spec_low)
        self.low_net.load_state_dict(bundle.load_state_dict(LOWRES))
        segmentation = SegmentationNet(spec_full)
        segmentation.load_state_dict(bundle.load_state_dict(FULLRES))
        #: one network per stage classifier, all gated by the same segmentation network
        self.members = []
        for name in classifier_weight_names(bundle):
            member = NnMTNet(spec_full, ClassifierOptions(**arch["classifier"]), segmentation=segmentation)
            member.classifier.load_state_dict(bundle.load_state_dict(name))
            self.members.append(member.eval())
        self.net = self.members[0]
        self.low_net.eval()
        self.stage_names = list(bundle.stages or STAGES)
        self.use_krt = bool(arch.get("krt", True))
        self.whole_size = arch.get("whole_volume_size")
        self.num_classes = len(self.plan.labels)

    def _segmentation_features(self, seg_crop: torch.Tensor) -> list[torch.Tensor] | None:
        """The segmentation encoder's features of the crop, which the attention gates read. Every member
        shares the one segmentation network, so an ensemble computes them once, not once per member."""
        first = self.members[0]
        return first.segmentation.encoder(seg_crop) if first.classifier.uses_attention else None

    def _member_logits(self, ct_crop: torch.Tensor, seg_crop: torch.Tensor) -> torch.Tensor:
        """(members, stages) logits of one crop: row k is ``members[k].classify(ct_crop, seg_crop)``."""
        features = self._segmentation_features(seg_crop)
        return torch.cat([m.classifier(ct_crop, features) for m in self.members])

    def _grad_cam(self, crop: torch.Tensor, stage_index: int) -> np.ndarray:
        """Grad-CAM of the predicted stage on the crop (0–1); for an ensemble, the mean of its members'
        maps renormalised, so regions that all classifiers rely on stay brightest."""
        with torch.no_grad():  # constants for the maps: only the classifier's own layers are explained
            features = self._segmentation_features(crop)
        maps = [grad_cam(m, m.classifier.last_conv_stage, (crop,), class_index=stage_index,
                         forward=lambda x, m=m: m.classifier(x[:, :1], features)).cam for m in self.members]
        cam = np.mean(np.asarray(maps, dtype=np.float32), axis=0)
        peak = float(cam.max())
        return cam / peak if peak > 0 else cam

    def _region(self, low_probs: torch.Tensor, low: PreprocessRecord, full: Preprocessor) -> CascadeRegion:
        """The full-resolution box around the low-resolution foreground (its single-object structures
        cleaned as the final labels are, so a stray island does not stretch the box)."""
        low_labels = keep_largest_object(unpad(low_probs.argmax(0).numpy().astype(np.uint8), low.pads),
                                         self.plan.labels)
        cfg = full.config
        return cascade_region(low_labels, full.resampled_shape(low), cfg.spacing, roi_margin_mm(self.plan),
                              cfg.patch_size)

    def _segment(self, image: Image, tta: str, timer: StepTimer, cancel: CancelFn | None,
                 restrict: bool = True) -> Segmented:
        """Both cascade stages (mirrored windows with ``tta="all"``) and the post-processing; with
        ``restrict`` the full-resolution stage runs only on the region the low-resolution one found."""
        plan = self.plan
        on = str(self.device)  # resampling runs where the networks do (torch: the GPU when there is one)
        pre_low = Preprocessor(plan, "3d_lowres", resampler="torch", device=on)
        pre_full = Preprocessor(plan, "3d_fullres", resampler="torch", device=on)
        shared = GridIndependentWork()
        with timer.step("preprocess"):
            low = pre_low(image, shared=shared)
        seg_mirror = SEGMENTATION_MIRROR_AXES if tta == "all" else ()
        window_low = SlidingWindowPredictor(pre_low.config.patch_size, self.device, mirror_axes=seg_mirror)
        window_full = SlidingWindowPredictor(pre_full.config.patch_size, self.device, mirror_axes=seg_mirror)
        with timer.step("segmentation_lowres"):
            low_probs = window_low(self.low_net, low.image, cancel)
        with timer.step("preprocess_fullres"):
            region = self._region(low_probs, low.record, pre_full) if restrict else None
            full = pre_full(image, shared=shared, roi=region.box if region is not None else None)
            prior = lowres_to_fullres(low_probs, low.record, full.record, self.num_classes)
            del low_probs
        seg_input = np.concatenate([full.image, prior], axis=0)
        del prior
        with timer.step("segmentation_fullres"):
            probs = window_full(self.net.segmentation, seg_input, cancel)
            pred = probs.argmax(0).numpy().astype(np.uint8)
        with timer.step("postprocess"):
            pred = keep_largest_object(pred, plan.labels)
        warnings = window_low.warnings + window_full.warnings
        return Segmented(full, seg_input, pred, window_full.device, warnings, region)

    def _krt_crop(self, seg: Segmented, timer: StepTimer) -> tuple[KrtBox, torch.Tensor]:
        """The classifier's crop: the KRT box around the tumour (or the whole volume without KRT)."""
        plan, pred, seg_input = self.plan, seg.labels, seg.seg_input
        with timer.step("krt"):
            if self.use_krt:
                size = plan.krt_box_size or plan.configuration("3d_fullres").patch_size
                box = krt_box(pred, size, plan.labels[TUMOUR], plan.labels.get(ORGAN_OF_ORIGIN))
            else:
                size = self.whole_size or list(pred.shape)
                box = box_around([(n - 1) / 2 for n in pred.shape], size, "volume")
            if box.source != "tumour" and self.use_krt:
                seg.warnings.append("No tumour (EC) was found in the segmentation; the staging crop was "
                                    f"centred on the {box.source} instead, so the T-stage is unreliable.")
            crop = torch.from_numpy(crop_box(seg_input, box, pad_value=outside_values(seg_input)))[None]
        return box, crop

    def _classify(self, crop: torch.Tensor, device: torch.device, tta: str, timer: StepTimer) -> np.ndarray:
        """(members, stages) probabilities, each member's averaged over the in-plane mirrorings."""
        for member in self.members:
            member.to(device)
        with timer.step("classification"):
            with torch.no_grad():
                inputs = (crop[:, :1].to(device), crop.to(device))
                axes = CLASSIFIER_MIRROR_AXES if tta != "none" else ()
                # an ensemble stages by the mean of its classifiers' (mirrored) probabilities
                per_member = mirrored_class_probabilities(self._member_logits, inputs,
                                                          axes).cpu().numpy().astype(np.float64)
            per_member /= per_member.sum(axis=1, keepdims=True)
        return per_member

    def _restore(self, seg: Segmented, cam_grid: np.ndarray | None, timer: StepTimer
                 ) -> tuple[np.ndarray, Image, Image | None]:
        """Labels and Grad-CAM (renormalised to 0–1) back on the input's grid."""
        record = seg.full.record
        with timer.step("restore"):
            restored = Preprocessor.restore_labels(seg.labels, record, device=str(seg.device))
            label_image = Preprocessor.to_image(restored, record)
            cam_image = None
            if cam_grid is not None:
                cam = np.clip(Preprocessor.restore_map(cam_grid, record, device=str(seg.device)), 0.0, 1.0)
                peak = float(cam.max())
                cam = (cam / peak if peak > 0 else cam).astype(np.float32)
                cam_image = Preprocessor.to_image(cam, record)
        return restored, label_image, cam_image

    def predict(self, image: Image, gradcam: bool = True, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, tta: str = "all", restrict_to_roi: bool = True
                ) -> EsophagusPrediction:
        """``tta`` (:data:`~engine.tasks.base.TTA_MODES`): "all" averages the segmentation over mirrored
        windows (4 passes per window) and the stage probabilities over the classifier's in-plane
        mirrorings (4 passes of a small crop); "stage" mirrors only the classifier; "none" neither.
        ``restrict_to_roi=False`` runs the full-resolution stage on the whole volume (slower; for
        comparisons)."""
        check_tta(tta)
        check_ct_intensities(image)
        timer = StepTimer(progress, cancel, INFERENCE_STEPS)
        seg = self._segment(image, tta, timer, cancel, restrict_to_roi)
        box, crop = self._krt_crop(seg, timer)
        per_member = self._classify(crop, seg.device, tta, timer)
        p = per_member.mean(axis=0)
        cam_grid = None
        if gradcam:
            with timer.step("gradcam"):
                cam = self._grad_cam(crop.to(seg.device), int(np.argmax(p)))
                cam_grid = paste_into_volume(cam, box.start, seg.labels.shape)
        restored, label_image, cam_image = self._restore(seg, cam_grid, timer)
        return EsophagusPrediction(
            labels=label_image, gradcam=cam_image,
            volumes_cm3=structure_volumes_cm3(restored, image.spacing, self.plan.label_names),
            stage_probabilities={s: float(v) for s, v in zip(self.stage_names, p)},
            predicted_stage=self.stage_names[int(np.argmax(p))],
            krt_box=krt_box_physical(box, seg.full.record), warnings=seg.warnings, timings_s=timer.timings,
            device=describe_device(seg.device), test_time_augmentation=describe_tta(tta),
            member_stage_probabilities=[{s: float(v) for s, v in zip(self.stage_names, row)}
                                        for row in per_member] if len(self.members) > 1 else [],
            full_resolution_region=describe_region(seg.region))

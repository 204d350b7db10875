"""nn-TransEC's data between the networks: cascade prior, post-processing, classifier crops.

The full-resolution segmentation network reads the CT and the one-hot low-resolution prediction
(the cascade prior); the stage classifier reads the KRT crop (or the whole volume) of both. Training
and Segment & Stage build these inputs with the same functions, so the classifier is trained on what
it will see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.data.patches import one_hot
from engine.inference.krt import KrtBox, box_around, crop_box
from engine.inference.postprocess import keep_largest_component
from engine.models.nn_mtnet import NetworkSpec, NnMTNet
from engine.preprocessing.pipeline import PreprocessedCase, PreprocessRecord
from engine.tasks.esophagus.options import CLASSIFIER_MIRROR_AXES, SINGLE_OBJECT, TrainOptions

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.planning.planner import Plan


@dataclass
class PreparedCase:
    """One training case at both cascade resolutions, with its stage index."""

    case_id: str
    stage: int | None
    full: PreprocessedCase
    low: PreprocessedCase
    prior: np.ndarray | None = None  # one-hot low-resolution prediction on the full-resolution grid


def lowres_to_fullres(low_probs: torch.Tensor, low: PreprocessRecord, full: PreprocessRecord,
                      num_classes: int) -> np.ndarray:
    """One-hot of the low-resolution prediction on the full-resolution grid (same crop box: both
    configurations crop the same foreground box, so only resize and padding differ), or on its region
    of interest when ``full`` has one (the same values there)."""
    from engine.inference.roi import resize_region_linear
    from engine.preprocessing.crop import pad, unpad

    probs = torch.from_numpy(np.ascontiguousarray(unpad(low_probs.numpy(), low.pads)))
    if full.roi is None:
        resized = F.interpolate(probs[None], size=full.resampled_shape, mode="trilinear", align_corners=False)[0]
    else:
        resized = resize_region_linear(probs, full.resampled_shape, full.roi)
    labels = resized.argmax(0).numpy().astype(np.uint8)
    return pad(one_hot(labels, num_classes), full.pads, value=0.0)


def keep_largest_object(pred: np.ndarray, labels: dict[str, int]) -> np.ndarray:
    """nn-TransEC's post-processing: the largest connected component of each single-object structure."""
    return keep_largest_component(pred, [labels[n] for n in SINGLE_OBJECT if n in labels])


def outside_values(seg_input: np.ndarray) -> list[float]:
    """What a crop reaching outside the volume is padded with, per channel of the full-resolution
    input: the CT's minimum (air after normalisation) and a one-hot prior saying "background"."""
    return [float(seg_input[0].min()), 1.0] + [0.0] * (seg_input.shape[0] - 2)


def fullres_input(case: PreparedCase) -> np.ndarray:
    """The full-resolution network's input: the CT and the cascade prior, stacked as channels."""
    assert case.prior is not None
    return np.concatenate([case.full.image, case.prior], axis=0)


def network_specs(plan: "Plan", options: TrainOptions) -> tuple[NetworkSpec, NetworkSpec]:
    """The cascade's low- and full-resolution network layouts (the full one also reads the prior)."""
    num_classes = len(plan.labels)
    low = NetworkSpec.from_topology(plan.configuration("3d_lowres").network, 1, num_classes,
                                    options.base_features, options.max_features)
    full = NetworkSpec.from_topology(plan.configuration("3d_fullres").network, 1 + num_classes, num_classes,
                                     options.base_features, options.max_features)
    return low, full


def whole_volume_size(cases: list[PreparedCase], stride: Sequence[int]) -> list[int]:
    """The classifier's input size without KRT: the largest volume, rounded up to the network stride."""
    biggest = np.max([c.full.image.shape[1:] for c in cases], axis=0)
    return [int(math.ceil(b / s) * s) for b, s in zip(biggest, stride)]


def classify_batch(model: NnMTNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Stage logits of a :class:`StageCrops` batch (the attention gates read the segmentation input)."""
    return model.classify(batch["ct"], batch["seg_input"] if model.classifier.uses_attention else None)


class StageCrops(torch.utils.data.Dataset):
    """Classifier inputs: the KRT crop (or the whole volume) of the CT and of the segmentation input.

    Training boxes are centred on the reference tumour with a random shift of up to ``jitter`` of the
    box (robustness to imperfect predicted centres); validation boxes are centred on the predicted
    tumour, exactly as at inference.
    """

    def __init__(self, cases: list[PreparedCase], boxes: list[KrtBox] | None, size: Sequence[int] | None,
                 train: bool, jitter: float):
        self.cases, self.boxes, self.size, self.train, self.jitter = cases, boxes, size, train, jitter

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        case = self.cases[i]
        seg_input = fullres_input(case)
        if self.boxes is not None:
            box = self.boxes[i]
            if self.train and self.jitter > 0:
                shift = [np.random.uniform(-self.jitter, self.jitter) * n for n in box.size]
                box = box_around([c + s for c, s in zip(box.centre, shift)], box.size, box.source)
            seg_input = crop_box(seg_input, box, pad_value=outside_values(seg_input))
        elif self.size is not None:
            seg_input = crop_box(seg_input, box_around([(n - 1) / 2 for n in seg_input.shape[1:]], self.size,
                                                       "volume"), pad_value=outside_values(seg_input))
        if self.train:
            seg_input = self._augment(seg_input)
        x = torch.from_numpy(np.ascontiguousarray(seg_input, dtype=np.float32))
        return {"ct": x[:1], "seg_input": x, "target": torch.tensor(case.stage, dtype=torch.long)}

    @staticmethod
    def _augment(seg_input: np.ndarray) -> np.ndarray:
        """In-plane mirroring and a CT intensity jitter."""
        for axis in (0, 1, 2):  # one draw per axis, mirrored or not (keeps seeded runs reproducible)
            if np.random.rand() < 0.5 and axis in CLASSIFIER_MIRROR_AXES:
                seg_input = np.flip(seg_input, axis=axis + 1)
        seg_input = seg_input.copy()
        seg_input[0] = seg_input[0] * np.random.uniform(0.9, 1.1) + np.random.normal(0, 0.05)
        return seg_input

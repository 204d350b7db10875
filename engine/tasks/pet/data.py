"""Training cases of the PET outcome task: each PET on the 2 mm grid, cut to a region around its
tumour, with its label, pathology and outcome; and the crops the network trains on.

Most crops are centred on the tumour (jittered by a few voxels, as the predictor will centre its crop
on a predicted tumour); the rest lie anywhere in the region, so the segmentation also learns what
is not tumour (heart, nodes, blood pool). Only tumour-centred crops carry the outcome and pathology.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.data.dataset import Case
from engine.errors import Cancelled, TrainingError
from engine.tasks.pet.options import OUTCOMES, PATHOLOGIES
from engine.tasks.pet.preprocessing import box_start, crop, mask_centre, prepare

log = logging.getLogger(__name__)

#: Extra voxels kept around the crop on each side, for jitter and random crops.
REGION_MARGIN = 16


@dataclass
class PetCase:
    """One case on the 2 mm grid, cut to the region around its tumour."""

    case_id: str
    suv: np.ndarray        # float16 region
    label: np.ndarray      # uint8 region, 1 = tumour
    centre: np.ndarray     # tumour centre within the region (voxels)
    pathology: int         # index into PATHOLOGIES, -1 unknown
    outcome: int           # 0 good, 1 poor, -1 unknown


def pathology_index(name: str | None) -> int:
    return PATHOLOGIES.index(name) if name in PATHOLOGIES else -1


def load_case(case: Case, crop_size: int) -> PetCase:
    """Read, reorient and resample one training case and keep the region around its tumour."""
    image = case.load_image()
    label = case.load_label(reference=image)
    prepared = prepare(image)
    grid_label = prepared.label_to_grid(label.array) > 0
    centre = mask_centre(grid_label)
    if centre is None:
        raise TrainingError(f"Case '{case.case_id}' has no tumour in its label map; every PET training case "
                            "needs its tumour labelled.")
    size = [crop_size + 2 * REGION_MARGIN] * 3
    start = box_start(centre, size)
    outcome = case.targets.outcome
    return PetCase(case.case_id, crop(prepared.suv, start, size).astype(np.float16),
                   crop(grid_label.astype(np.uint8), start, size), centre - np.asarray(start),
                   pathology_index(case.targets.pathology),
                   int(outcome) if outcome in (0, 1) else -1)


def load_cases(cases: Sequence[Case], crop_size: int, cancel: Callable[[], bool] | None = None) -> list[PetCase]:
    out = []
    for i, case in enumerate(cases):
        if cancel is not None and cancel():
            raise Cancelled("training cancelled while the cases were read; no model was written")
        out.append(load_case(case, crop_size))
        if (i + 1) % 50 == 0:
            log.info("Read %d of %d cases.", i + 1, len(cases))
    return out


def check_targets(cases: Sequence[PetCase]) -> None:
    """Refuse a dataset the outcome cannot be learned from."""
    outcomes = [c.outcome for c in cases if c.outcome >= 0]
    if len(set(outcomes)) < 2:
        raise TrainingError(f"The PET outcome needs both outcomes among the training cases (stages.csv column "
                            f"'outcome': 0 = {OUTCOMES[0]}, 1 = {OUTCOMES[1]}); found {sorted(set(outcomes))}.")


class CropSampler(torch.utils.data.Dataset):
    """Random training crops; ``length`` is the number a pass draws (the trainer fixes steps per epoch)."""

    def __init__(self, cases: Sequence[PetCase], crop_size: int, suv_scale: float, tumour_fraction: float,
                 jitter: int, length: int):
        self.cases, self.size, self.scale = list(cases), crop_size, suv_scale
        self.tumour_fraction, self.jitter, self.length = tumour_fraction, jitter, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        case = self.cases[int(torch.randint(len(self.cases), (1,)))]
        centred = float(torch.rand(())) < self.tumour_fraction
        if centred:
            shift = torch.randint(-self.jitter, self.jitter + 1, (3,)).numpy()
            start = box_start(case.centre + shift, [self.size] * 3)
        else:
            start = tuple(int(torch.randint(0, n - self.size + 1, ())) for n in case.suv.shape)
        return crop_item(case, start, self.size, self.scale, with_targets=centred)


def crop_item(case: PetCase, start: Sequence[int], size: int, suv_scale: float,
              with_targets: bool = True) -> dict[str, torch.Tensor]:
    """One network input (SUV / scale), its label crop and (or -1) its pathology and outcome."""
    suv = crop(case.suv, start, [size] * 3).astype(np.float32)
    label = crop(case.label, start, [size] * 3)
    return {"image": torch.from_numpy(suv / suv_scale)[None], "label": torch.from_numpy(label.astype(np.float32))[None],
            "pathology": torch.tensor(case.pathology if with_targets else -1),
            "outcome": torch.tensor(case.outcome if with_targets else -1)}


class CentredCrops(torch.utils.data.Dataset):
    """The tumour-centred crop of every case, unjittered: the validation set."""

    def __init__(self, cases: Sequence[PetCase], crop_size: int, suv_scale: float):
        self.cases, self.size, self.scale = list(cases), crop_size, suv_scale

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        case = self.cases[index]
        return crop_item(case, box_start(case.centre, [self.size] * 3), self.size, self.scale)

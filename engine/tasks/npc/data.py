"""MRI preprocessing for the NPC network and the training cases it sees.

The engine's :class:`~engine.preprocessing.Preprocessor` reorders the voxels into the plan's
orientation, crops to the head, resamples to the plan's spacing and z-scores the volume over the body;
this module then cuts the paper's fixed field of view (21 × 224 × 224 voxels at 6 × 0.4688 × 0.4688 mm,
i.e. 126 × 105 × 105 mm) around the head's centre, at whatever spacing the plan chose, and pastes the
network's outputs back so they can be restored to the input's grid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.data.dataset import RawDataset
from engine.io.image import Image
from engine.planning.planner import Plan
from engine.preprocessing.pipeline import Preprocessor, PreprocessRecord
from engine.tasks.npc.options import AUGMENT_MIRROR_AXES, PAPER_FIELD_OF_VIEW_MM

log = logging.getLogger(__name__)
CONFIGURATION = "3d_fullres"


def head_patch_size(spacing: Sequence[float], median_shape: Sequence[int]) -> list[int]:
    """The paper's head field of view in voxels at ``spacing``, no larger than the data's median image."""
    return [max(1, min(round(fov / s), int(m))) for fov, s, m in zip(PAPER_FIELD_OF_VIEW_MM, spacing,
                                                                          median_shape)]


def npc_plan(ds: RawDataset, spacing: Sequence[float] | None = None) -> Plan:
    """The engine's plan for this dataset with the patch set to the head field of view at its spacing."""
    from engine.planning import extract_fingerprint, make_plan

    return with_head_patch(make_plan(extract_fingerprint(ds), "npc", spacing=spacing))


def with_head_patch(plan: Plan) -> Plan:
    """``plan`` with its patch set to the head field of view at its spacing (whoever made the plan: the
    network's crop is the paper's 126 × 105 × 105 mm, not the generic planner's memory-budget patch)."""
    config = plan.configuration(CONFIGURATION)
    config.patch_size = head_patch_size(config.spacing, config.median_shape)
    log.info("NPC plan: spacing %s mm, head crop %s voxels", config.spacing, config.patch_size)
    return plan


@dataclass
class HeadCrop:
    """Where the network's field of view lies in the preprocessed (padded) grid."""

    start: list[int]
    size: list[int]
    grid: list[int]

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, a + n) for a, n in zip(self.start, self.size))

    def cut(self, array: np.ndarray) -> np.ndarray:
        """The crop of a (…, z, y, x) array."""
        return np.ascontiguousarray(array[(..., *self.slices)])

    def paste(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """(…, z, y, x) values of the crop placed in the whole preprocessed grid."""
        out = np.full((*values.shape[:-3], *self.grid), fill, dtype=values.dtype)
        out[(..., *self.slices)] = values
        return out


def head_crop(record: PreprocessRecord, size: Sequence[int]) -> HeadCrop:
    """A ``size`` box centred on the resampled head (the padding added to reach the patch size is
    outside it), kept inside the grid."""
    grid = [r + a + b for r, (a, b) in zip(record.resampled_shape, record.pads)]
    centre = [a + r / 2.0 for r, (a, _) in zip(record.resampled_shape, record.pads)]
    start = [int(min(max(round(c - n / 2.0), 0), g - n)) for c, n, g in zip(centre, size, grid)]
    return HeadCrop(start, list(size), grid)


@dataclass
class PreparedVolume:
    """One MRI ready for the network: the head crop (1, z, y, x), its label crop, and how to undo both."""

    image: np.ndarray
    label: np.ndarray | None
    record: PreprocessRecord
    crop: HeadCrop


def prepare(plan: Plan, image: Image, label: Image | None = None) -> PreparedVolume:
    """Preprocess an MRI (and its label) as the plan says and cut the head crop."""
    config = plan.configuration(CONFIGURATION)
    case = Preprocessor(plan, CONFIGURATION)(image, label)
    crop = head_crop(case.record, config.patch_size)
    lab = None if case.label is None else crop.cut(case.label)
    return PreparedVolume(crop.cut(case.image), lab, case.record, crop)


@dataclass
class TrainingVolume:
    """A prepared training case: image, binary GTV mask and stage index."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    stage: int


class NpcCases(torch.utils.data.Dataset):
    """Training (left-right mirroring, intensity scale and shift) or validation samples."""

    def __init__(self, volumes: Sequence[TrainingVolume], train: bool, seed: int = 0):
        self.volumes, self.train, self.seed = list(volumes), train, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v = self.volumes[i]
        image, label = v.image, v.label[None]
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            for axis in AUGMENT_MIRROR_AXES:
                if rng.random() < 0.5:
                    image, label = np.flip(image, axis + 1), np.flip(label, axis + 1)
            image = image * np.float32(rng.uniform(0.9, 1.1)) + np.float32(rng.uniform(-0.1, 0.1))
        return {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)),
                "target": torch.tensor(v.stage, dtype=torch.long)}

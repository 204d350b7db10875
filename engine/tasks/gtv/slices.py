"""The GTV task's training data: every axial slice of a dataset, preprocessed once and kept in memory,
with a per-slice "GTV present" flag, plus the paper's online augmentation.

A 2D pipeline revisits the same slices every epoch; reading and resampling volumes each time would
dominate the run. OpenKBP (170 × 128 slices) at 128² takes about 0.7 GB as float16.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from engine.data.dataset import Case
from engine.errors import Cancelled, TrainingError
from engine.tasks.gtv.preprocessing import (
    GtvPlan,
    SlicePreprocessor,
    SliceRecord,
    body_box,
    body_mask,
    body_sample,
    plan_from_cases,
)

log = logging.getLogger(__name__)


@dataclass
class SliceSet:
    """Slices of several cases, stacked: ``images`` ``[m, S, S]`` float16, ``labels`` uint8, ``abnormal``
    (the slice holds GTV), ``case_index`` into ``case_ids``."""

    images: np.ndarray
    labels: np.ndarray
    abnormal: np.ndarray
    case_index: np.ndarray
    case_ids: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, case_ids: Sequence[str]) -> SliceSet:
        wanted = [i for i, c in enumerate(self.case_ids) if c in set(case_ids)]
        keep = np.isin(self.case_index, wanted)
        remap = {old: new for new, old in enumerate(wanted)}
        return SliceSet(self.images[keep], self.labels[keep], self.abnormal[keep],
                        np.array([remap[int(i)] for i in self.case_index[keep]], dtype=np.int32),
                        [self.case_ids[i] for i in wanted])

    def describe(self) -> str:
        return (f"{len(self.case_ids)} case(s), {len(self)} slices, {int(self.abnormal.sum())} with GTV "
                f"({100.0 * float(self.abnormal.mean()) if len(self) else 0.0:.1f} %)")


@dataclass
class _Located:
    case_id: str
    volume: np.ndarray
    label: np.ndarray
    record: SliceRecord


def load_slices(cases: Sequence[Case], labels: dict[str, int], plan: GtvPlan | None = None,
                image_size: int | None = None, threshold: float = 0.5, tumour_value: int = 1,
                cancel: Callable[[], bool] | None = None, seed: int = 0) -> tuple[SliceSet, GtvPlan]:
    """Read every case once, plan from them (unless ``plan`` is given) and cut them into slices."""
    rng = np.random.default_rng(seed)
    located, boxes, spacings, samples = [], [], [], []
    probe = SlicePreprocessor(plan or GtvPlan(image_size=image_size or 32, labels=dict(labels)))
    for case in cases:
        if cancel is not None and cancel():
            raise Cancelled("training cancelled by the user; no model was written")
        image = case.load_image()
        label = case.load_label(reference=image)
        volume, reo = probe.canonical(image)
        mask = body_mask(volume, probe.plan.body_threshold_hu, probe.plan.body_erosion)
        box = body_box(mask)
        boxes.append(box)
        spacings.append(float(min(image.spacing[1:])))
        samples.append(body_sample(volume, mask, rng))
        # whole HU are enough for a CT window and halve the memory of float32
        hu = np.clip(np.rint(volume), -32768, 32767).astype(np.int16)
        located.append(_Located(case.case_id, hu,
                                label.array, SliceRecord(reo, tuple(volume.shape), box)))  # type: ignore[arg-type]
    if not located:
        raise TrainingError("No labelled cases to train on.")
    if plan is None:
        plan = plan_from_cases(boxes, spacings, samples, labels, image_size, threshold)
    pre = SlicePreprocessor(plan)
    images, masks, index = [], [], []
    for i, item in enumerate(located):
        images.append(pre.slices_of(item.volume.astype(np.float32), item.record).astype(np.float16))
        masks.append(pre.label_slices(item.label, item.record, tumour_value))
        index.append(np.full(item.record.slices, i, dtype=np.int32))
    lab = np.concatenate(masks)
    slices = SliceSet(np.concatenate(images), lab, lab.reshape(len(lab), -1).any(axis=1),
                      np.concatenate(index), [item.case_id for item in located])
    log.info("Slices: %s, %d² each", slices.describe(), plan.image_size)
    return slices, plan


def sample_count(abnormal: np.ndarray, ratio: str) -> int:
    """How many slices one epoch draws under a Balance-Sampling ratio (abnormal : normal)."""
    a, total = int(abnormal.sum()), int(abnormal.size)
    factor = {"abnormal": 1, "1:1": 2, "1:2": 3, "1:4": 5}.get(ratio)
    if factor is None or a == 0:
        return total
    return min(total, factor * a)


def draw_indices(abnormal: np.ndarray, ratio: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch's slice indices by the Balance-Sampling Strategy (random undersampling of normal slices)."""
    from engine.data.balance_sampling import balanced_indices

    return np.asarray(balanced_indices(abnormal, ratio, n, rng), dtype=np.int64)


def augmentation(size: int) -> Any:
    """The paper's online augmentation on ``{"image": [1,S,S], "label": [1,S,S]}``: random erasing, zoom,
    elastic distortion, rotation, vertical flip, Gaussian noise (MONAI 2D transforms)."""
    from monai import transforms as T

    keys, modes = ("image", "label"), ("bilinear", "nearest")
    return T.Compose([
        T.RandZoomd(keys, prob=0.3, min_zoom=0.85, max_zoom=1.15, mode=("bilinear", "nearest-exact"),
                    keep_size=True),
        T.RandRotated(keys, range_x=np.pi / 12, prob=0.3, mode=modes, padding_mode="zeros"),
        T.Rand2DElasticd(keys, spacing=(max(size // 8, 4),) * 2, magnitude_range=(1.0, 2.0), prob=0.1,
                         mode=modes, padding_mode="zeros"),
        T.RandFlipd(keys, prob=0.5, spatial_axis=0),
        T.RandGaussianNoised("image", prob=0.2, std=0.05),
        T.RandCoarseDropoutd("image", holes=1, max_holes=3, spatial_size=max(size // 16, 2),
                             max_spatial_size=max(size // 6, 3), prob=0.2, fill_value=0.0),
    ])


class SliceSamples(Dataset):
    """A torch dataset over a :class:`SliceSet` whose slices are re-drawn each epoch (:meth:`set_epoch`)
    by the Balance-Sampling ratio; items ``{"image": [1,S,S], "label": [S,S], "target": 0|1}``."""

    def __init__(self, slices: SliceSet, ratio: str, seed: int, augment: bool, cap: int | None = None):
        self.slices, self.ratio, self.seed = slices, ratio, seed
        self.count = sample_count(slices.abnormal, ratio) if cap is None else min(cap, len(slices))
        self.indices = np.arange(self.count) % max(len(slices), 1)
        self.epoch_seed = seed
        self.transform = augmentation(slices.images.shape[-1]) if augment else None
        self.set_epoch(1)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        self.indices = draw_indices(self.slices.abnormal, self.ratio, self.count, rng)
        self.epoch_seed = int(rng.integers(2**31))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = int(self.indices[i])
        image = self.slices.images[k][None].astype(np.float32)
        label = self.slices.labels[k][None].astype(np.float32)
        if self.transform is not None:
            # seeded per (epoch, item): the same augmentation whatever the worker or a resume
            self.transform.set_random_state(seed=(self.epoch_seed + i) % 2**31)
            out = self.transform({"image": image, "label": label})
            image, label = np.asarray(out["image"], dtype=np.float32), np.asarray(out["label"])
        label_t = torch.as_tensor(np.rint(label[0]), dtype=torch.long)
        return {"image": torch.as_tensor(image), "label": label_t,
                "target": torch.tensor(int(self.slices.abnormal[k]), dtype=torch.long)}


class FixedSlices(Dataset):
    """Validation slices in a fixed order (no augmentation)."""

    def __init__(self, slices: SliceSet, indices: np.ndarray | None = None):
        self.slices = slices
        self.indices = np.arange(len(slices)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = int(self.indices[i])
        return {"image": torch.as_tensor(self.slices.images[k][None].astype(np.float32)),
                "label": torch.as_tensor(self.slices.labels[k].astype(np.int64)),
                "target": torch.tensor(int(self.slices.abnormal[k]), dtype=torch.long)}

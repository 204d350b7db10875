"""The fixed OpenKBP split of the GTV task: 136 training and 34 validation patients.

Made once by :func:`make_split` and stored in ``openkbp_split.json`` beside this file, so every run
and every engineer compares on the same held-out patients. Stratified by target size: patients sorted
by their PTV70 voxel count, then one of every consecutive five drawn for validation (seed 0).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

SPLIT_FILE = Path(__file__).with_name("openkbp_split.json")
VALIDATION_EVERY = 5


def case_id(patient: int) -> str:
    """The dataset case id ``engine convert-openkbp`` gives patient ``pt_N``."""
    return f"openkbp_{patient}"


def make_split(target_voxels: Mapping[int, int], seed: int = 0) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...]}`` of case ids, one in five for validation within size blocks."""
    rng = np.random.default_rng(seed)
    ordered = sorted(target_voxels, key=lambda p: (target_voxels[p], p))
    val = []
    for start in range(0, len(ordered), VALIDATION_EVERY):
        block = ordered[start:start + VALIDATION_EVERY]
        val.append(block[int(rng.integers(len(block)))])
    train = sorted(set(ordered) - set(val))
    return {"train": [case_id(p) for p in train], "val": [case_id(p) for p in sorted(val)]}


def split_cases(path: str | Path, part: str) -> list[str]:
    """The case ids of one part (``train`` or ``val``) of a split JSON file."""
    from engine.errors import EngineError

    try:
        cases = json.loads(Path(path).read_text(encoding="utf-8"))[part]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineError(f"Cannot read the '{part}' cases of split file {path} ({exc}).") from exc
    return [str(c) for c in cases]

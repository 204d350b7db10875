"""Cross-validation folds, stratified by T-stage when the dataset has stages.

Saved as ``splits.json`` in nnU-Net's shape — a list of ``{"train": [...], "val": [...]}`` — so
the same file serves nnU-Net users and is recorded with the trained model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sklearn.model_selection import KFold, StratifiedKFold

from engine.data.dataset import RawDataset
from engine.errors import DatasetError


def make_splits(case_ids: list[str], stages: list[str | None] | None = None, folds: int = 5,
                seed: int = 12345) -> list[dict[str, list[str]]]:
    """k folds; stratified by stage when every case has one and each stage has ≥ ``folds`` cases."""
    if folds < 2:
        raise DatasetError(f"Cross-validation needs at least 2 folds (got {folds}).")
    if len(case_ids) < folds:
        raise DatasetError(f"{len(case_ids)} case(s) cannot be split into {folds} folds; use fewer folds.")
    ids = sorted(case_ids)
    order = {c: i for i, c in enumerate(case_ids)}
    strat = None
    if stages is not None and all(stages):
        by_id = {c: stages[order[c]] for c in case_ids}
        strat = [by_id[c] for c in ids]
        counts = {s: strat.count(s) for s in set(strat)}
        if min(counts.values()) < folds:
            strat = None  # too few cases of some stage for exact stratification
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if strat is not None
                else KFold(folds, shuffle=True, random_state=seed))
    out = []
    for train_idx, val_idx in splitter.split(ids, strat if strat is not None else None):
        out.append({"train": [ids[i] for i in train_idx], "val": [ids[i] for i in val_idx]})
    return out


def dataset_splits(dataset: RawDataset, folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    cases = dataset.training
    return make_splits([c.case_id for c in cases], [c.stage for c in cases], folds, seed)


def save_splits(splits: list[dict[str, list[str]]], path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(splits, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_splits(path: str | os.PathLike) -> list[dict[str, list[str]]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all({"train", "val"} <= set(d) for d in data):
        raise DatasetError(f"{path} is not a splits file (a list of {{'train': [...], 'val': [...]}}).")
    return data

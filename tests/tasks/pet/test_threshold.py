"""The tumour threshold is chosen where the whole-volume Dice of the kept tumour is best."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.dataset import RawDataset
from engine.synth import generate_dataset
from engine.tasks.pet.threshold import choose_threshold, threshold_scores


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("pet_threshold")
    generate_dataset("pet", root / "data", cases=2, seed=51, preset="small")
    return RawDataset.load(root / "data").training


def test_a_threshold_above_the_false_positives_wins(cases):
    from engine.tasks.pet.preprocessing import prepare

    references = {}
    for case in cases:
        image = case.load_image()
        prepared = prepare(image)
        references[prepared.suv.tobytes()] = prepared.label_to_grid(case.load_label(reference=image).array) > 0

    def probability_of(suv: np.ndarray) -> np.ndarray:
        """The tumour at 0.97, every other voxel with uptake above SUV 1 at 0.8 (connected to it)."""
        tumour = references[suv.tobytes()]
        return np.where(tumour, 0.97, np.where(suv > 1.0, 0.8, 0.05)).astype(np.float32)

    scores = threshold_scores(probability_of, cases, candidates=(0.5, 0.9, 0.99))
    assert scores[0.9] == pytest.approx(1.0) and scores[0.99] == 0.0 and scores[0.5] < 0.5
    assert choose_threshold(scores) == 0.9


def test_ties_go_to_the_lowest_threshold():
    assert choose_threshold({0.5: 0.4, 0.9: 0.7, 0.99: 0.7}) == 0.9

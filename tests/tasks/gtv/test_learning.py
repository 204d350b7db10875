"""The GTV cascade learns: a few epochs of a tiny HCF on phantoms find the nodules of its training
cases (Dice far above the all-background baseline of 0) and the classifier keeps their slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.data.dataset import RawDataset
from engine.metrics import dice
from engine.synth import generate_dataset
from engine.tasks.gtv.options import GtvTrainOptions
from engine.tasks.gtv.predictor import GtvPredictor
from engine.tasks.gtv.training import train


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one thread, especially on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_hcf_learns_phantom_gtv(tmp_path, one_thread):
    data = generate_dataset("gtv", tmp_path / "data", cases=4, seed=3).root
    options = GtvTrainOptions(classifier_epochs=4, segmenter_epochs=20, steps_per_epoch=6, width=8, image_size=96,
                              classifier_batch_size=16, segmenter_batch_size=8, segmenter_ratio="abnormal",
                              augment=False, lr=3e-3, fold=None, device="cpu", seed=0)
    bundle = train(data, tmp_path / "model", options)
    curve = bundle.training["loss_curves"]["segmenter"]
    assert curve[-1] < 0.8 * curve[0]
    predictor = GtvPredictor(bundle, "cpu")
    scores, recall = [], []
    for case in RawDataset.load(data).training:
        image, ref = case.load_image(), case.load_label().array
        result = predictor.predict(image, gradcam=False)
        scores.append(dice(result.labels.array, ref))
        truth = np.flatnonzero(ref.reshape(ref.shape[0], -1).any(1))
        recall.append(np.isin(truth, result.slices_kept).mean())
    assert np.mean(scores) > 0.3, scores
    assert np.mean(recall) > 0.8, recall

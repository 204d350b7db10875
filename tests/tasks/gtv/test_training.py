"""GTV training mechanics: ResFormer bundles, the time budget and resuming a stopped run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import Cancelled
from engine.io.image import read_image
from engine.synth import generate_dataset
from engine.tasks.gtv.options import GtvTrainOptions
from engine.tasks.gtv.predictor import GtvPredictor
from engine.tasks.gtv.training import train

TINY = {"classifier_epochs": 1, "segmenter_epochs": 1, "steps_per_epoch": 1, "width": 8, "image_size": 64,
        "fold": None, "device": "cpu", "augment": False, "classifier_batch_size": 8, "segmenter_batch_size": 4}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_dataset("gtv", tmp_path_factory.mktemp("gtv") / "data", cases=2, seed=7).root


def test_resformer_bundle_predicts_with_gradcam(data, tmp_path):
    bundle = train(data, tmp_path / "res", GtvTrainOptions(**TINY, architecture="resformer", threshold=0.01))
    assert {w.name for w in bundle.weights} == {"resformer"} and bundle.architecture["name"] == "ResFormer"
    assert "ResFormer" in bundle.read_model_card()
    image = next(iter((data / "imagesTr").iterdir()))
    result = GtvPredictor(bundle, "cpu").predict(read_image(image))
    assert len(result.slice_probabilities) == result.labels.shape[0]
    assert result.gradcam is not None and result.gradcam.shape == result.labels.shape


def test_time_limit_keeps_the_weights_so_far(data, tmp_path):
    bundle = train(data, tmp_path / "budget", GtvTrainOptions(**{**TINY, "classifier_epochs": 50,
                                                                 "segmenter_epochs": 50}, time_limit_min=0.05))
    assert bundle.metrics["segmenter"]["time_limit_reached"]
    assert bundle.metrics["segmenter"]["epochs"] < 50


def test_resume_continues_a_stopped_run(data, tmp_path):
    options = GtvTrainOptions(**{**TINY, "segmenter_epochs": 2})
    epochs_seen = []

    def stop_in_segmenter(event):
        if event.kind == "epoch" and "segmenter" in (event.message or ""):
            epochs_seen.append(event.epoch)
            raise Cancelled("stop after the first segmenter epoch")

    with pytest.raises(Cancelled):
        train(data, tmp_path / "model", options, callbacks=[stop_in_segmenter])
    assert epochs_seen == [1] and (tmp_path / ".model.work").is_dir()
    bundle = train(data, tmp_path / "model", options, resume=True)
    assert bundle.metrics["segmenter"]["epochs"] == 2 and not (tmp_path / ".model.work").exists()


def test_batched_gradcam_equals_the_engines_per_slice_gradcam():
    from engine.explain.gradcam import grad_cam
    from engine.models.sanet import SliceClassifier
    from engine.tasks.gtv.predictor import batched_grad_cam

    torch.manual_seed(0)
    net = SliceClassifier(width=8).eval()
    x = torch.randn(3, 1, 64, 64)
    batched = batched_grad_cam(net.last_conv_stage, x, net)
    for i in range(3):
        single = grad_cam(net, net.last_conv_stage, (x[i:i + 1],), class_index=1).cam
        np.testing.assert_allclose(batched[i], single, atol=1e-4)
    assert net.training is False and all(p.grad is None for p in net.parameters())

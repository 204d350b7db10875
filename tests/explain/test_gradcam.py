"""Grad-CAM: the map points at the evidence, equals CAM where theory says so, and leaves the model as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.explain import grad_cam, paste_into_volume
from engine.models.nn_mtnet import NetworkSpec, NnMTNet

BLOB = (slice(18, 24), slice(6, 12), slice(20, 26))  # z, y, x of the bright evidence


class BlobDetector(nn.Module):
    """Strided 3D conv whose first channel averages intensity; class 1 reads that channel, class 0 the others."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 4, 3, stride=2, padding=1)
        self.act = nn.ReLU(inplace=inplace)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight[0].fill_(1 / 27)
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[0.0, 0.1, 0.1, 0.1], [5.0, 0.0, 0.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def _blob_volume() -> torch.Tensor:
    rng = np.random.default_rng(1)
    volume = rng.uniform(0.0, 0.2, (32, 32, 32)).astype(np.float32)
    volume[BLOB] = 3.0
    return torch.from_numpy(volume)[None, None]


def test_cam_peaks_on_the_evidence_blob():
    model = BlobDetector()
    result = grad_cam(model, model.conv, _blob_volume())
    assert result.class_index == 1  # the blob channel wins
    assert result.cam.shape == (32, 32, 32) and result.cam.dtype == np.float32
    assert result.cam.min() >= 0.0 and result.cam.max() == pytest.approx(1.0)
    peak = np.unravel_index(np.argmax(result.cam), result.cam.shape)
    for axis, index in enumerate(peak):  # inside the blob, give or take the conv's stride
        assert BLOB[axis].start - 2 <= index < BLOB[axis].stop + 2
    outside = np.ones(result.cam.shape, bool)
    outside[BLOB] = False
    assert result.cam[BLOB].mean() > 5 * result.cam[outside].mean()
    np.testing.assert_allclose(result.probabilities, torch.softmax(torch.from_numpy(result.logits), 0).numpy(),
                               rtol=1e-6)
    assert result.probabilities.sum() == pytest.approx(1.0)


def test_2d_grad_cam_equals_cam_for_global_pooling_head():
    """With GAP + linear head, ∂y_c/∂A_k = W_ck / N, so Grad-CAM = ReLU(Σ W_ck A_k) up to scale (Zhou's CAM)."""
    torch.manual_seed(3)
    features = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.LeakyReLU(0.1))
    head = nn.Linear(5, 3)
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    x = torch.randn(1, 2, 12, 10)
    result = grad_cam(model, features, x, class_index=2)
    with torch.no_grad():
        activation = features(x)[0]
        expected = torch.relu(torch.einsum("k,khw->hw", head.weight[2], activation)).numpy()
    expected /= expected.max()
    assert result.class_index == 2 and result.cam.shape == (12, 10)
    np.testing.assert_allclose(result.cam, expected, atol=1e-5)


def test_output_size_resamples_the_map():
    model = BlobDetector()
    result = grad_cam(model, model.conv, _blob_volume(), output_size=(8, 8, 8))
    assert result.cam.shape == (8, 8, 8)
    peak = np.unravel_index(np.argmax(result.cam), result.cam.shape)
    assert 4 <= peak[0] <= 6 and 1 <= peak[1] <= 3 and 4 <= peak[2] <= 6  # blob centre / 4


def test_zero_gradient_gives_all_zero_map_without_nan():
    model = BlobDetector()
    with torch.no_grad():
        model.fc.weight.zero_()
    result = grad_cam(model, model.conv, _blob_volume())
    assert np.all(result.cam == 0.0) and np.all(np.isfinite(result.cam))
    np.testing.assert_allclose(result.probabilities, [0.5, 0.5])


def _conv_relu_gap_net(inplace: bool) -> nn.Sequential:
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(inplace=inplace), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 3))


@pytest.mark.parametrize("inplace", [False, True])
def test_activation_is_the_target_output_even_with_in_place_ops_after_it(inplace):
    """Target = conv before a ReLU: ∂y_c/∂A_k = W_ck·[A_k > 0]/N; an in-place ReLU must not overwrite A."""
    model = _conv_relu_gap_net(inplace)
    x = torch.randn(1, 1, 9, 11, generator=torch.Generator().manual_seed(2))
    result = grad_cam(model, model[0], x, class_index=0)
    with torch.no_grad():
        activation = model[0](x)[0]
        weights = model[4].weight[0][:, None, None] * (activation > 0).float().mean(dim=(1, 2), keepdim=True)
        expected = torch.relu((weights * activation).sum(0)).numpy()
    assert expected.max() > 0
    np.testing.assert_allclose(result.cam, expected / expected.max(), atol=1e-5)


def test_frozen_layers_still_give_a_map():
    model = BlobDetector()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trainable = BlobDetector()
    reference = grad_cam(trainable, trainable.conv, _blob_volume())
    result = grad_cam(model, model.conv, _blob_volume())
    np.testing.assert_allclose(result.cam, reference.cam, atol=1e-6)


def test_model_state_is_restored_and_no_gradients_are_left():
    model = BlobDetector()
    model.train()
    model.pool.eval()  # a deliberately mixed state must come back exactly
    grad_cam(model, model.conv, _blob_volume())
    assert model.training and model.conv.training and not model.pool.training
    assert len(model.conv._forward_hooks) == 0
    assert all(p.grad is None for p in model.parameters())


def test_hooks_removed_and_mode_restored_when_forward_fails():
    model = BlobDetector()
    model.train()

    def failing_forward(x):
        model(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        grad_cam(model, model.conv, _blob_volume(), forward=failing_forward)
    assert len(model.conv._forward_hooks) == 0 and model.training


def test_unused_target_layer_and_batches_are_refused():
    model = BlobDetector()
    with pytest.raises(ValueError, match="not called"):
        grad_cam(model, nn.Conv3d(1, 1, 1), _blob_volume())
    with pytest.raises(ValueError, match="one sample"):
        grad_cam(model, model.conv, torch.zeros(2, 1, 8, 8, 8))
    assert len(model.conv._forward_hooks) == 0


def test_works_on_nn_mtnet_classifier_with_attention_gates():
    """The case MONAI's GradCAM cannot take as is: ``classify`` takes two inputs (CT crop, and the
    segmentation input crop whose encoder features drive the gates)."""
    torch.manual_seed(0)
    spec = NetworkSpec(in_channels=4, num_classes=3, features=[4, 8, 16, 16], kernel_sizes=[[3, 3, 3]] * 4,
                       strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]])
    net = NnMTNet(spec)
    ct_crop, seg_input_crop = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 4, 32, 32, 32)
    target = net.classifier.encoder.stages[-1]
    result = grad_cam(net, target, (ct_crop, seg_input_crop), forward=net.classify)
    assert len(target._forward_hooks) == 0 and net.training
    assert all(p.grad is None for p in net.parameters())
    assert result.cam.shape == (32, 32, 32)
    assert np.all(np.isfinite(result.cam)) and result.cam.min() >= 0.0 and result.cam.max() <= 1.0
    assert result.cam.max() == pytest.approx(1.0)  # seeded network: the predicted class has positive evidence
    assert result.probabilities.shape == (4,) and result.probabilities.sum() == pytest.approx(1.0)
    assert result.class_index == int(np.argmax(result.logits))
    net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(net.classify(ct_crop, seg_input_crop)[0].numpy(), result.logits,
                                   rtol=1e-4, atol=1e-5)


def test_paste_into_volume_clips_a_box_partly_outside():
    crop = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 1
    volume = paste_into_volume(crop, (-1, 3, 7), (6, 6, 10))
    assert volume.shape == (6, 6, 10) and volume.dtype == np.float32
    # overlap: z 0..3 (crop 1..4), y 3..6 (crop 0..3), x 7..10 (crop 0..3)
    np.testing.assert_array_equal(volume[0:3, 3:6, 7:10], crop[1:4, 0:3, 0:3])
    assert volume.sum() == crop[1:4, 0:3, 0:3].sum()  # nothing else was written


def test_paste_into_volume_inside_and_fully_outside():
    crop = np.ones((2, 2), np.float32)
    inside = paste_into_volume(crop, (1, 2), (4, 5))
    assert inside.sum() == 4 and np.all(inside[1:3, 2:4] == 1)
    assert paste_into_volume(crop, (10, 0), (4, 5)).sum() == 0
    assert paste_into_volume(crop, (-2, 0), (4, 5)).sum() == 0

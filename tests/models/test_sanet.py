"""HCF/SANet networks: shapes of every ablation, SAM's learnt offset, PPM bins, the dilated encoder,
gradients, and the slice classifier with Grad-CAM. Tiny widths and 64 px inputs keep it fast."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from engine.explain.gradcam import grad_cam
from engine.models.resnet2d import RESNET34_LAYERS, ResNetEncoder2d
from engine.models.sanet import PyramidPooling, SANet, SliceClassifier, SpatialAlignment

WIDTH = 8


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine is shared; one thread avoids oversubscription (much faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("use_ppm,use_sam", list(itertools.product([True, False], repeat=2)))
def test_sanet_logits_at_input_size_for_every_ablation(use_ppm: bool, use_sam: bool):
    torch.manual_seed(0)
    net = SANet(in_channels=1, num_classes=3, width=WIDTH, lateral=16, use_ppm=use_ppm, use_sam=use_sam)
    out = net(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 3, 64, 64)
    assert (net.align is not None) == use_sam
    assert isinstance(net.context, PyramidPooling) == use_ppm


def test_encoder_resolutions_and_dilated_last_stage():
    x = torch.randn(1, 1, 64, 64)
    plain = ResNetEncoder2d(width=WIDTH)(x)
    assert [f.shape[-1] for f in plain] == [16, 16, 8, 4, 2]  # stem /4, stages /4 /8 /16 /32
    dilated_encoder = ResNetEncoder2d(width=WIDTH, dilate_last=True)
    dilated = dilated_encoder(x)
    # Stage 4 stays at stage 3's 1/16 instead of going down to 1/32.
    assert [f.shape[-1] for f in dilated] == [16, 16, 8, 4, 4]
    assert [f.shape[1] for f in dilated] == list(dilated_encoder.channels) == [8, 8, 16, 32, 64]
    last = dilated_encoder.stages[-1]
    assert all(b.conv1.dilation == (2, 2) and b.conv1.stride == (1, 1) for b in last)
    resnet34 = ResNetEncoder2d(layers=RESNET34_LAYERS, width=WIDTH)
    assert [len(s) for s in resnet34.stages] == [3, 4, 6, 3]


def test_pyramid_pooling_pools_bins_1_2_3_6():
    ppm = PyramidPooling(16, 12)
    pooled_sizes = []
    hooks = [path[0].register_forward_hook(lambda _m, _i, out: pooled_sizes.append(tuple(out.shape[-2:])))
             for path in ppm.paths]
    out = ppm(torch.randn(2, 16, 12, 12))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 12, 12, 12)
    assert ppm.bins == (1, 2, 3, 6)
    assert pooled_sizes == [(1, 1), (2, 2), (3, 3), (6, 6)]


def _zero_offset(sam: SpatialAlignment) -> None:
    with torch.no_grad():
        sam.offset.weight.zero_()
        sam.offset.bias.zero_()


def test_sam_zero_offset_is_bilinear_upsampling_and_offset_shifts_sampling():
    torch.manual_seed(0)
    sam = SpatialAlignment(low_ch=4, high_ch=6, out_ch=4)
    low, high = torch.randn(1, 4, 8, 8), torch.randn(1, 6, 16, 16)
    _zero_offset(sam)
    aligned = sam(low, high)
    assert aligned.shape == (1, 4, 16, 16)
    assert torch.allclose(aligned, F.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False),
                          atol=1e-5)
    assert sam.last_offset is not None and sam.last_offset.shape == (1, 2, 16, 16)
    with torch.no_grad():
        sam.offset.bias.copy_(torch.tensor([2.0, 0.0]))  # sample two pixels to the right
    shifted = sam(low, high)
    assert torch.allclose(sam.last_offset[:, 0], torch.full((1, 16, 16), 2.0))
    assert not torch.allclose(shifted, aligned)
    # Away from the border a shift of two high-resolution pixels reads the map two columns over.
    assert torch.allclose(shifted[..., 2:12], aligned[..., 4:14], atol=1e-5)


def test_sam_output_projection_when_channels_differ():
    sam = SpatialAlignment(low_ch=6, high_ch=4, out_ch=8)
    assert sam(torch.randn(2, 6, 4, 4), torch.randn(2, 4, 8, 8)).shape == (2, 8, 8, 8)


def test_sanet_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = SANet(width=WIDTH, lateral=16)
    target = torch.randint(0, 2, (2, 64, 64))
    F.cross_entropy(net(torch.randn(2, 1, 64, 64)), target).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.encoder.stem[0].weight.grad.abs().sum() > 0
    assert net.align[0].offset.weight.grad.abs().sum() > 0


def test_slice_classifier_logits_and_grad_cam():
    torch.manual_seed(0)
    clf = SliceClassifier(in_channels=1, width=WIDTH, num_classes=2)
    assert clf(torch.randn(3, 1, 64, 64)).shape == (3, 2)
    assert clf.last_conv_stage is clf.encoder.stages[-1]
    clf.train()
    result = grad_cam(clf, clf.last_conv_stage, torch.randn(1, 1, 64, 64), class_index=1)
    assert result.cam.shape == (64, 64)
    assert result.class_index == 1 and result.probabilities.shape == (2,)
    assert 0.0 <= result.cam.min() and result.cam.max() <= 1.0
    assert clf.training  # grad_cam restores the mode

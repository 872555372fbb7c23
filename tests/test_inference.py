"""Sliding-window inference and the label schemes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tumorseg.inference import InferenceConfig, mirror_sets, sliding_window_logits
from tumorseg.inference.schemes import out_channels, probabilities, targets, to_labels
from tumorseg.labels import to_regions


def pointwise_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Conv3d(4, 3, kernel_size=1).eval()


@pytest.mark.parametrize("shape", [(40, 36, 28), (17, 23, 19), (8, 8, 8)])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_blended_windows_of_a_pointwise_network_equal_one_pass(shape, mode):
    net = pointwise_net()
    image = torch.randn(2, 4, *shape)
    config = InferenceConfig(roi_size=16, overlap=0.5, sw_batch_size=3, mode=mode)
    logits = sliding_window_logits(net, image, config)
    assert logits.shape == (2, 3, *shape) and logits.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(logits, net(image), atol=1e-5, rtol=1e-5)


def test_windows_see_only_their_own_region():
    # a network that counts the voxels of its input: every window is roi-sized (padded at the border)
    class Size(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 1, *x.shape[2:]), float(x[0, 0].numel()))

    logits = sliding_window_logits(Size(), torch.zeros(1, 1, 30, 20, 10), InferenceConfig(roi_size=(16, 8, 4)))
    assert torch.all(logits == 16 * 8 * 4)


def test_mirroring_averages_the_eight_flips():
    assert len(mirror_sets(True)) == 8 and mirror_sets(False) == [()]
    net = pointwise_net()  # flip-equivariant: mirroring changes nothing
    image = torch.randn(1, 4, 20, 18, 16)
    plain = sliding_window_logits(net, image, InferenceConfig(roi_size=12))
    mirrored = sliding_window_logits(net, image, InferenceConfig(roi_size=12, mirror=True))
    torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=1e-5)

    class XRamp(nn.Module):  # not equivariant: output = x coordinate within the window
        def forward(self, x):
            ramp = torch.arange(x.shape[2], dtype=torch.float32).view(1, 1, -1, 1, 1)
            return ramp.expand(x.shape[0], 1, *x.shape[2:]).clone()

    out = sliding_window_logits(XRamp(), torch.zeros(1, 1, 8, 4, 4), InferenceConfig(roi_size=8, mirror=True))
    torch.testing.assert_close(out, torch.full_like(out, 3.5))  # half the flips reverse the ramp


def test_inference_config_rejects_bad_values():
    with pytest.raises(ValueError, match="roi_size"):
        InferenceConfig(roi_size=(16, 16))
    with pytest.raises(ValueError, match="overlap"):
        InferenceConfig(overlap=1.0)
    with pytest.raises(ValueError, match="sw_batch_size"):
        InferenceConfig(sw_batch_size=0)
    with pytest.raises(ValueError, match="mode"):
        InferenceConfig(mode="linear")
    with pytest.raises(ValueError, match="batch, modalities"):
        sliding_window_logits(pointwise_net(), torch.zeros(4, 8, 8, 8))


def test_label_schemes_round_trip():
    torch.manual_seed(0)
    label = torch.randint(0, 4, (2, 6, 5, 4))
    regions = to_regions(label, axis=1)
    assert torch.equal(regions, torch.from_numpy(to_regions(label.numpy()).swapaxes(0, 1)))
    assert out_channels("regions") == 3 and out_channels("softmax4") == 4
    # perfect logits give back the label map in both schemes
    onehot = torch.nn.functional.one_hot(label.long(), 4).permute(0, 4, 1, 2, 3).float()
    assert torch.equal(to_labels(probabilities(20 * onehot - 10, "softmax4"), "softmax4"), label.to(torch.uint8))
    region_logits = 20 * targets(label, "regions") - 10
    assert torch.equal(to_labels(probabilities(region_logits, "regions"), "regions"), label.to(torch.uint8))
    assert targets(label, "softmax4").shape == (2, 1, 6, 5, 4)
    with pytest.raises(ValueError, match="label scheme"):
        out_channels("sigmoid")

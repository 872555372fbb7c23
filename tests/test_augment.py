"""Tests of tumorseg.data.augment on small CPU batches."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tumorseg.data.augment import PRESETS, AugmentConfig, BatchAugment, augment_cost
from tumorseg.labels import REGION_CLASSES, REGIONS

SHAPE = (2, 4, 24, 20, 16)  # (B, C, X, Y, Z)
ALL_SPATIAL = {"p_flip": (1.0, 1.0, 1.0), "p_rotate": 1.0, "p_scale": 1.0}
ALL_INTENSITY = {"p_noise": 1.0, "p_blur": 1.0, "p_brightness": 1.0, "p_contrast": 1.0, "p_gamma": 1.0}


def only(**changes) -> AugmentConfig:
    """The "none" preset with some transforms switched on."""
    return dataclasses.replace(PRESETS["none"], **changes)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def phantom(shape=SHAPE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Off-centre, nested ellipsoids (classes 2 > 1 > 3) in a zero background, and noisy channels.

    Off-centre, so that no flip or rotation about the centre maps the phantom onto itself.
    """
    batch, _, *size = shape
    grid = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in size], indexing="ij")

    def inside(centre, radii):
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1

    label = torch.zeros(size, dtype=torch.uint8)
    label[inside((0.2, -0.1, 0.0), (0.7, 0.6, 0.8))] = 2
    label[inside((0.35, 0.05, 0.1), (0.35, 0.35, 0.35))] = 1
    label[inside((0.45, 0.1, 0.2), (0.15, 0.2, 0.2))] = 3
    label = label.expand(batch, *size).clone()
    noise = torch.randn(shape, generator=seeded(seed))
    image = torch.where(label[:, None] > 0, label[:, None].float() + 0.3 * noise, torch.zeros(()))
    return image, label


def regions(label: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 3, X, Y, Z) WT/TC/ET masks of an internal label map."""
    return torch.stack([torch.isin(label, torch.tensor(REGION_CLASSES[r])) for r in REGIONS], dim=1).to(dtype)


def test_none_preset_is_identity():
    image, label = phantom()
    for lab in (label, regions(label, torch.bool)):
        out_image, out_label = BatchAugment("none")(image, lab, seeded())
        assert torch.equal(out_image, image) and torch.equal(out_label, lab)


def test_flip_twice_is_identity():
    image, label = phantom()
    flip = BatchAugment(only(p_flip=(1.0, 1.0, 1.0)))
    once = flip(image, label, seeded(1))
    assert torch.equal(once[0], image.flip(2, 3, 4)) and torch.equal(once[1], label.flip(1, 2, 3))
    twice = flip(*once, seeded(2))
    assert torch.equal(twice[0], image) and torch.equal(twice[1], label)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, "bool-masks", "float-masks"])
def test_label_values_and_dtype_preserved(dtype):
    image, label = phantom()
    if dtype == "bool-masks":
        label = regions(label, torch.bool)
    elif dtype == "float-masks":
        label = regions(label, torch.float32)
    else:
        label = label.to(dtype)
    config = dataclasses.replace(PRESETS["default"], **ALL_SPATIAL, **ALL_INTENSITY)
    for seed in range(3):
        out_image, out_label = BatchAugment(config)(image, label, seeded(seed))
        assert out_label.dtype == label.dtype and out_label.shape == label.shape
        assert out_image.dtype == image.dtype and out_image.shape == image.shape
        assert set(out_label.unique().tolist()) <= set(label.unique().tolist())
        assert not torch.equal(out_label, label)


def test_image_and_labels_stay_aligned():
    image, label = phantom((2, 4, 32, 28, 24))
    image[:, 0] = label.float()  # channel 0 is the label itself
    out_image, out_label = BatchAugment(only(**ALL_SPATIAL))(image, label, seeded(3))
    assert not torch.equal(out_label, label)
    # Inside the tumour and away from boundaries (all 26 neighbours hold the same class); the
    # background is left out because it would dominate the count. A 2-voxel shift scores ~0.96.
    lab = out_label[:, None].float()
    interior = (F.max_pool3d(lab, 3, 1, 1) == -F.max_pool3d(-lab, 3, 1, 1))[:, 0] & (out_label > 0)
    agree = out_image[:, 0].round()[interior] == out_label[interior].float()
    assert interior.sum() > 500 and agree.float().mean() >= 0.99


# Shape (8, 10, 6) has its centre at (3.5, 4.5, 2.5); the marked voxel (1, 2, 4) sits at offset
# (-2.5, -2.5, 1.5). A right-handed 90-degree turn about X maps offsets (x, y, z) -> (x, -z, y),
# about Y -> (z, y, -x), about Z -> (-y, x, z); adding the centre back gives these voxels.
@pytest.mark.parametrize(("axis", "expected"), [(0, (1, 3, 0)), (1, (5, 2, 5)), (2, (6, 2, 4))])
def test_rotation_by_90_degrees_moves_a_voxel_where_computed(axis, expected):
    image = torch.zeros(1, 1, 8, 10, 6)
    label = torch.zeros(1, 8, 10, 6, dtype=torch.uint8)
    image[0, 0, 1, 2, 4], label[0, 1, 2, 4] = 1.0, 1
    angles = [(0.0, 0.0)] * 3
    angles[axis] = (90.0, 90.0)
    out_image, out_label = BatchAugment(only(p_rotate=1.0, rotate_range=angles))(image, label, seeded())
    assert out_label.nonzero().tolist() == [[0, *expected]]
    assert out_image[0, 0][expected] == pytest.approx(1.0, abs=1e-4)
    assert out_image.sum() == pytest.approx(1.0, abs=1e-4)


def test_unselected_samples_come_out_bit_exact():
    image, label = phantom((8, 4, 16, 16, 16))
    image, label = image[:1].expand_as(image).clone(), label[:1].expand_as(label).clone()
    for config in (only(p_rotate=0.5), only(p_blur=0.5), only(p_gamma=0.5), only(p_contrast=0.5)):
        out_image, out_label = BatchAugment(config)(image, label, seeded(5))
        same = [torch.equal(out_image[b], image[b]) for b in range(8)]
        assert 0 < sum(same) < 8, config
        assert all(torch.equal(out_label[b], label[b]) for b in range(8) if same[b])


def test_samples_draw_independent_parameters():
    image, label = phantom()
    image, label = image[:1].expand_as(image).clone(), label[:1].expand_as(label).clone()
    config = dataclasses.replace(PRESETS["default"], **ALL_SPATIAL, **ALL_INTENSITY)
    out_image, out_label = BatchAugment(config)(image, label, seeded())
    assert not torch.equal(out_image[0], out_image[1]) and not torch.equal(out_label[0], out_label[1])
    out_image, _ = BatchAugment(only(p_brightness=1.0))(image, label, seeded())
    assert not torch.equal(out_image[0], out_image[1])


def test_seeded_generator_is_deterministic():
    image, label = phantom()
    config = dataclasses.replace(PRESETS["default"], **ALL_SPATIAL, **ALL_INTENSITY)
    augment = BatchAugment(config)
    first, again, other = (augment(image, label, seeded(s)) for s in (7, 7, 8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])
    torch.manual_seed(7)  # without a generator, torch's global seed decides
    global_first = augment(image, label)
    torch.manual_seed(7)
    assert torch.equal(augment(image, label)[0], global_first[0])


def test_intensity_transforms_leave_labels_untouched():
    image, label = phantom()
    out_image, out_label = BatchAugment(only(**ALL_INTENSITY))(image, label, seeded())
    assert out_label is label
    assert not torch.equal(out_image, image)


def test_brightness_keeps_the_background_and_noise_does_not():
    # nnU-Net's choice, kept here: intensity transforms act on every voxel, so only the
    # multiplicative brightness keeps zero voxels at zero.
    image, label = phantom()
    background = image == 0
    bright, _ = BatchAugment(only(p_brightness=1.0))(image, label, seeded())
    assert torch.equal(bright[background], image[background])
    ratio = (bright / image.where(~background, torch.ones(())))[~background]
    assert ratio.min() >= 0.75 - 1e-6 and ratio.max() <= 1.25 + 1e-6
    noisy, _ = BatchAugment(only(p_noise=1.0, noise_std=(0.05, 0.1)))(image, label, seeded())
    assert (noisy[background] != 0).float().mean() > 0.99


def test_contrast_keeps_range_and_gamma_keeps_statistics():
    image, label = phantom()
    contrast, _ = BatchAugment(only(p_contrast=1.0))(image, label, seeded())
    assert torch.all(contrast.amin(dim=(2, 3, 4)) >= image.amin(dim=(2, 3, 4)))
    assert torch.all(contrast.amax(dim=(2, 3, 4)) <= image.amax(dim=(2, 3, 4)))
    gamma, _ = BatchAugment(only(p_gamma=1.0))(image, label, seeded())
    assert not torch.allclose(gamma, image)
    torch.testing.assert_close(gamma.mean(dim=(2, 3, 4)), image.mean(dim=(2, 3, 4)), atol=1e-4, rtol=0)
    torch.testing.assert_close(gamma.std(dim=(2, 3, 4)), image.std(dim=(2, 3, 4)), atol=1e-4, rtol=1e-4)


def test_blur_of_a_point_is_the_sampled_gaussian():
    image = torch.zeros(1, 2, 15, 15, 15)
    image[:, :, 7, 7, 7] = 1.0
    label = torch.zeros(1, 15, 15, 15, dtype=torch.uint8)
    out, _ = BatchAugment(only(p_blur=1.0, blur_sigma=(1.0, 1.0)))(image, label, seeded())
    weights = torch.tensor([math.exp(-0.5 * j * j) for j in range(-3, 4)])
    weights /= weights.sum()
    expected = torch.zeros(15)
    expected[4:11] = weights  # radius 3 sigma around voxel 7
    torch.testing.assert_close(out[0, 0, :, 7, 7], expected * weights[3] ** 2)
    torch.testing.assert_close(out.sum(dim=(2, 3, 4)), torch.ones(1, 2))


def test_autocast_keeps_labels_and_image_dtype():
    image, label = phantom()
    config = dataclasses.replace(PRESETS["default"], **ALL_SPATIAL, **ALL_INTENSITY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_image, out_label = BatchAugment(config)(image, label, seeded())
    assert out_image.dtype == torch.float32 and out_label.dtype == torch.uint8
    assert set(out_label.unique().tolist()) <= {0, 1, 2, 3}


def test_presets_and_hydra_dicts():
    paper = PRESETS["paper"]
    assert paper.p_noise == paper.p_blur == paper.p_brightness == paper.p_contrast == paper.p_gamma == 0.0
    assert paper.p_rotate > 0 and paper.p_scale > 0 and paper.p_flip == (0.5, 0.5, 0.5)
    augment = BatchAugment({"p_flip": [1, 1, 1], "rotate_range": [[-5, 5], [0, 0], [0, 0]]})
    assert augment.config.p_flip == (1.0, 1.0, 1.0) and augment.config.rotate_range[0] == (-5.0, 5.0)
    assert augment.config.p_gamma == PRESETS["default"].p_gamma
    assert BatchAugment({}).config == PRESETS["default"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("p_rotate", 1.5),
        ("p_gamma", -0.1),
        ("p_flip", (0.5, 0.5)),
        ("p_flip", (0.5, 0.5, 2.0)),
        ("rotate_range", ((10.0, -10.0), (0.0, 0.0), (0.0, 0.0))),
        ("rotate_range", ((0.0, 200.0), (0.0, 0.0), (0.0, 0.0))),
        ("scale_range", (1.2, 0.9)),
        ("scale_range", (0.0, 1.2)),
        ("noise_std", (-0.1, 0.1)),
        ("blur_sigma", ("a", 1.0)),
        ("gamma_range", (0.7,)),
    ],
)
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        BatchAugment({field: value})


def test_unknown_options_and_presets_are_named():
    with pytest.raises(ValueError, match=r"p_rotation.*valid options.*p_rotate"):
        BatchAugment({"p_rotation": 0.2})
    with pytest.raises(ValueError, match=r"'strong'.*default"):
        BatchAugment("strong")


def test_mismatched_inputs_are_rejected():
    image, label = phantom()
    with pytest.raises(ValueError, match="does not match"):
        BatchAugment()(image, label[:, :-1])
    with pytest.raises(ValueError, match="integer classes"):
        BatchAugment()(image, label.float())


def test_timing_sanity():
    cost = augment_cost("cpu", batch=2, channels=4, patch=64, preset="default", repeats=3)
    print(f"\nBatchAugment default preset, CPU, 2x4x64^3: {cost['median_ms']:.1f} ms/batch")
    assert cost["median_ms"] > 0 and cost["patch"] == 64

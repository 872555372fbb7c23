"""``tumorseg.labels``: region and class masks, the painting order, probabilities, post-processing
and volumes, on numpy arrays and torch tensors alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tumorseg.inference.schemes import to_labels
from tumorseg.labels import (
    REGION_PAINTING,
    REGIONS,
    paint_regions,
    postprocess,
    region_probabilities,
    remove_small_pieces,
    to_classes,
    to_regions,
    volumes_cm3,
)

# (WT, TC, ET) of one voxel -> the class it is painted with; the last three are not nested
PAINTED = {
    (0, 0, 0): 0,
    (1, 0, 0): 2,  # WT only: edema
    (1, 1, 0): 1,  # TC without ET: necrosis
    (1, 1, 1): 3,  # ET
    (0, 0, 1): 3,  # ET is painted last, whatever else is on
    (0, 1, 0): 1,
    (1, 0, 1): 3,
}


def test_painting_order_turns_nested_regions_into_classes():
    assert [region for region, _ in REGION_PAINTING] == ["wt", "tc", "et"]
    masks = np.array(list(PAINTED), dtype=bool).T  # (3 regions, voxels)
    expected = np.array(list(PAINTED.values()), dtype=np.uint8)
    painted = paint_regions(masks)
    assert painted.dtype == np.uint8 and np.array_equal(painted, expected)
    painted = paint_regions(torch.from_numpy(masks.T.copy())[None], axis=2)  # (1, voxels, 3)
    assert painted.dtype == torch.uint8 and torch.equal(painted[0], torch.from_numpy(expected))
    # the regions scheme paints thresholded probabilities the same way
    probs = torch.from_numpy(masks.astype(np.float32))[None]
    assert torch.equal(to_labels(probs, "regions")[0], torch.from_numpy(expected))
    with pytest.raises(ValueError, match="3 region masks"):
        paint_regions(masks[:2])


def test_region_masks_agree_for_numpy_and_torch_and_paint_back():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(2, 5, 4, 3)).astype(np.uint8)
    regions = to_regions(label, axis=1)
    assert regions.shape == (2, 3, 5, 4, 3) and regions.dtype == bool
    for index, classes in enumerate(((1, 2, 3), (1, 3), (3,))):
        assert np.array_equal(regions[:, index], np.isin(label, classes))
    tensor = torch.from_numpy(label)
    assert torch.equal(to_regions(tensor, axis=1), torch.from_numpy(regions))
    assert np.array_equal(to_regions(label[0]), regions[0])  # default: the region axis first
    assert np.array_equal(paint_regions(regions, axis=1), label)
    assert torch.equal(paint_regions(to_regions(tensor, axis=1), axis=1), tensor)
    classes = to_classes(tensor, axis=1)
    assert torch.equal(classes, torch.stack([tensor == c for c in (1, 2, 3)], dim=1))
    assert np.array_equal(to_classes(label, axis=1), classes.numpy())


def test_region_probabilities_add_the_class_probabilities():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(4, 6, 5), dim=0)
    regions = region_probabilities(probs, "softmax4")
    expected = torch.stack([probs[1] + probs[2] + probs[3], probs[1] + probs[3], probs[3]])
    assert torch.equal(regions, expected)
    assert np.array_equal(region_probabilities(probs.numpy(), "softmax4"), expected.numpy())
    assert region_probabilities(regions, "regions") is regions
    # one-hot class probabilities give the region masks
    label = torch.randint(0, 4, (6, 5))
    onehot = torch.nn.functional.one_hot(label, 4).movedim(-1, 0).float()
    assert torch.equal(region_probabilities(onehot, "softmax4").bool(), to_regions(label))


def test_postprocess_relabels_small_enhancing_tumour_as_necrosis():
    label = np.array([0, 3, 3, 2, 1], dtype=np.uint8)
    relabelled, changed = postprocess(label, 3)
    assert changed and relabelled.tolist() == [0, 1, 1, 2, 1] and label.tolist() == [0, 3, 3, 2, 1]
    kept, changed = postprocess(label, 2)
    assert kept is label and not changed
    assert postprocess(label, 0)[1] is False  # 0 turns the rule off
    assert postprocess(np.zeros(4, np.uint8), 5)[1] is False  # no ET at all: nothing to relabel
    # TC and WT keep their voxels
    assert np.array_equal(to_regions(relabelled)[:2], to_regions(label)[:2])


def test_volumes_cm3():
    label = np.zeros((10, 10, 10), dtype=np.uint8)
    label[:2] = 2
    label[2:3] = 1
    label[3:4] = 3
    volumes = volumes_cm3(label, (2.0, 1.0, 0.5))  # 1 mm^3 voxels
    assert list(volumes) == [f"{region}_cm3" for region in REGIONS]
    assert volumes == pytest.approx({"wt_cm3": 0.4, "tc_cm3": 0.2, "et_cm3": 0.1})


def test_remove_small_pieces_keeps_pieces_by_their_share_of_the_largest():
    label = np.zeros((20, 20, 20), np.uint8)
    label[2:8, 2:8, 2:8] = 2  # the largest piece, 216 voxels
    label[4:6, 4:6, 4:6] = 3
    label[12:16, 12:16, 12:15] = 1  # 48 voxels: 0.22 of the largest
    label[18, 18, 18] = 3  # 1 voxel
    label[8, 8, 8] = 2  # touches the largest by a corner only: the same piece (26-connected)
    kept, removed = remove_small_pieces(label, 0.1)
    expected = label.copy()
    expected[18, 18, 18] = 0
    assert removed == 1 and np.array_equal(kept, expected)
    assert remove_small_pieces(label, 0.0) == (label, 0)  # off
    largest, removed = remove_small_pieces(label, 1.0)
    assert removed == 2 and int((largest > 0).sum()) == 217  # the largest piece only, its labels unchanged
    assert np.array_equal(largest[:10, :10, :10], label[:10, :10, :10])
    one = np.zeros((4, 4, 4), np.uint8)
    assert remove_small_pieces(one, 1.0)[1] == 0  # no tumour

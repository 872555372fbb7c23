"""Tests of ``tumorseg.evaluate``: HD95 and the region metrics against hand-worked and brute-force
values, the bounding-box shortcut against the whole volume, and the command line end to end."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from brats_fixtures import affine, case_id, internal_label, write_dataset, write_nifti
from scipy.ndimage import binary_erosion, gaussian_filter, generate_binary_structure
from scipy.spatial.distance import cdist

from tumorseg.evaluate import (
    COLUMNS,
    HD95_EMPTY,
    METRICS,
    dice_from_counts,
    evaluate_folder,
    hd95,
    main,
    region_metrics,
    surface_distances,
)
from tumorseg.labels import REGION_CLASSES, REGIONS, from_internal

SHAPE = (12, 10, 8)
SPACING = (1.0, 1.5, 2.0)


# ------------------------------------------------------------------------------------ references


def brute_force_hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    """medpy's definition written out: all pairwise distances between the surface voxels, in mm."""
    structure = generate_binary_structure(3, 1)

    def surface_mm(mask: np.ndarray) -> np.ndarray:
        surface = mask ^ binary_erosion(mask, structure=structure, iterations=1)
        return np.argwhere(surface) * np.asarray(spacing)

    distances = cdist(surface_mm(pred), surface_mm(ref))
    return float(np.percentile(np.hstack((distances.min(axis=1), distances.min(axis=0))), 95))


def random_masks(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Two smooth random blobs in a volume of about 20x18x16, often touching its border, and a random spacing."""
    rng = np.random.default_rng(seed)
    shape = (20 + rng.integers(-2, 3), 18 + rng.integers(-2, 3), 16 + rng.integers(-2, 3))
    spacing = tuple(float(size) for size in rng.uniform(0.4, 3.0, size=3))

    def blob() -> np.ndarray:
        field = gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(1.0, 2.5))
        return field > np.quantile(field, rng.uniform(0.6, 0.97))

    pred, ref = blob(), blob()
    if seed % 7 == 3:  # a lone voxel against a blob
        pred = np.zeros(shape, dtype=bool)
        pred[tuple(rng.integers(0, n) for n in shape)] = True
    if seed % 7 == 5:  # identical masks
        pred = ref.copy()
    return pred, ref, spacing


RANDOM_CASES = [random_masks(seed) for seed in range(20)]


def touches_border(mask: np.ndarray) -> bool:
    return any(np.take(mask, index, axis=axis).any() for axis in range(3) for index in (0, -1))


def region_masks(label: np.ndarray) -> dict[str, np.ndarray]:
    return {region: np.isin(label, REGION_CLASSES[region]) for region in REGIONS}


def random_label(rng: np.random.Generator, shape) -> np.ndarray:
    """Internal label map of smooth nested blobs: edema around enhancing tumour around necrosis."""
    field = gaussian_filter(rng.standard_normal(shape), 1.5)
    levels = np.quantile(field, [0.7, 0.85, 0.95])
    return np.digitize(field, levels, right=True).astype(np.uint8)[..., None].choose([0, 2, 3, 1]).squeeze(-1)


# ----------------------------------------------------------------------------------------- hd95


def test_hd95_of_two_voxels_is_their_distance():
    pred, ref = np.zeros((5, 8, 5), dtype=bool), np.zeros((5, 8, 5), dtype=bool)
    pred[2, 2, 2] = True
    ref[2, 5, 2] = True  # 3 voxels along y
    assert hd95(pred, ref, (0.7, 2.5, 1.2)) == pytest.approx(3 * 2.5)
    assert hd95(ref, pred, (0.7, 2.5, 1.2)) == pytest.approx(3 * 2.5)


def test_hd95_of_cubes_offset_along_x():
    # Two 3x3x3 cubes, pred at x 2..4, ref at x 3..5 (y, z 2..4), spacing (2, 1, 0.5) mm. The surface
    # of a 3x3x3 cube is all of it but the centre, (3, 3, 3) for pred and (4, 3, 3) for ref.
    # pred -> ref: x=2 face, 9 voxels at 2 mm (sx, to ref's x=3 face); x=3, 8 voxels lying on ref's
    # x=3 face: 0; x=4 face, 8 voxels on ref's surface: 0, and (4, 3, 3), ref's centre, 0.5 mm
    # (sz, to (4, 3, 2)). ref -> pred is the mirror image: 9 x 2, 16 x 0, 1 x 0.5.
    # Pooled: 32 x 0, 2 x 0.5, 18 x 2; the 95th percentile (index 0.95 * 51 = 48.45) is 2.
    pred, ref = np.zeros((8, 7, 7), dtype=bool), np.zeros((8, 7, 7), dtype=bool)
    pred[2:5, 2:5, 2:5] = True
    ref[3:6, 2:5, 2:5] = True
    spacing = (2.0, 1.0, 0.5)
    pred_to_ref, ref_to_pred = surface_distances(pred, ref, spacing)
    expected = [0.0] * 16 + [0.5] + [2.0] * 9
    assert sorted(pred_to_ref) == pytest.approx(expected)
    assert sorted(ref_to_pred) == pytest.approx(expected)
    assert hd95(pred, ref, spacing) == pytest.approx(2.0)
    assert hd95(pred, ref, spacing) == pytest.approx(brute_force_hd95(pred, ref, spacing))


def test_hd95_interpolates_the_pooled_percentile():
    # pred: a 2x2x1 slab at z=0 and a lone voxel (3, 3, 3); ref: the 2x2x2 cube at 0..1. Every voxel
    # of such thin shapes is surface. Spacing (1, 2, 5) mm.
    # pred -> ref: slab 4 x 0; (3, 3, 3) to (1, 1, 1): sqrt(2^2 + 4^2 + 10^2) = sqrt(120).
    # ref -> pred: z=0 4 x 0; z=1 4 x 5 (straight down to the slab).
    # Pooled, sorted: 8 x 0, 4 x 5, sqrt(120); the 95th percentile lies at index 0.95 * 12 = 11.4.
    pred, ref = np.zeros((4, 4, 4), dtype=bool), np.zeros((4, 4, 4), dtype=bool)
    pred[0:2, 0:2, 0] = True
    pred[3, 3, 3] = True
    ref[0:2, 0:2, 0:2] = True
    assert hd95(pred, ref, (1.0, 2.0, 5.0)) == pytest.approx(5 + 0.4 * (math.sqrt(120) - 5))


def test_hd95_of_empty_masks_follows_brats():
    empty, full = np.zeros((4, 5, 6), dtype=bool), np.zeros((4, 5, 6), dtype=bool)
    full[1:3, 1:3, 1:3] = True
    assert hd95(empty, empty, (1, 1, 1)) == 0.0
    assert hd95(full, empty, (1, 1, 1)) == HD95_EMPTY == 373.13
    assert hd95(empty, full, (1, 1, 1)) == HD95_EMPTY


def test_hd95_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same shape"):
        hd95(np.ones((3, 3, 3)), np.ones((3, 3, 4)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((3, 3, 3)), np.ones((3, 3, 3)), (1, 1))


def test_random_cases_cover_the_volume_border():
    assert sum(touches_border(pred) or touches_border(ref) for pred, ref, _ in RANDOM_CASES) >= 10


@pytest.mark.parametrize("index", range(len(RANDOM_CASES)))
def test_hd95_matches_brute_force(index):
    pred, ref, spacing = RANDOM_CASES[index]
    expected = brute_force_hd95(pred, ref, spacing)
    assert hd95(pred, ref, spacing) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert hd95(pred, ref, spacing, crop=False) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_hd95_matches_medpy():
    binary = pytest.importorskip("medpy.metric.binary")
    for pred, ref, spacing in RANDOM_CASES:
        assert hd95(pred, ref, spacing) == pytest.approx(binary.hd95(pred, ref, voxelspacing=spacing), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_bounding_box_equals_whole_volume(seed):
    rng = np.random.default_rng(100 + seed)
    small_pred, small_ref, spacing = RANDOM_CASES[seed]
    volume = (40, 36, 30)
    # at the origin, against the far corner, and somewhere inside
    corner = [(0, 0, 0), tuple(v - s for v, s in zip(volume, small_pred.shape)), None][seed % 3]
    corner = corner or tuple(int(rng.integers(1, v - s)) for v, s in zip(volume, small_pred.shape))
    place = tuple(slice(c, c + s) for c, s in zip(corner, small_pred.shape))
    pred, ref = np.zeros(volume, dtype=bool), np.zeros(volume, dtype=bool)
    pred[place], ref[place] = small_pred, small_ref
    cropped, whole = surface_distances(pred, ref, spacing), surface_distances(pred, ref, spacing, crop=False)
    for a, b in zip(cropped, whole):
        np.testing.assert_array_equal(a, b)
    assert hd95(pred, ref, spacing) == hd95(pred, ref, spacing, crop=False)

    pred_label = np.where(pred, 2, 0).astype(np.uint8)
    pred_label[pred & (rng.random(volume) < 0.5)] = 3
    ref_label = np.where(ref, 1, 0).astype(np.uint8)
    metrics = region_metrics(pred_label, ref_label, spacing)
    pred_masks, ref_masks = region_masks(pred_label), region_masks(ref_label)
    for region in REGIONS:
        assert metrics[region]["hd95"] == hd95(pred_masks[region], ref_masks[region], spacing, crop=False)


# --------------------------------------------------------------------------------- region metrics


def test_region_metrics_hand_case():
    # 4x4x4 voxels of 1 x 2 x 5 mm = 10 mm^3 = 0.01 cm^3.
    # ref: ED in the 2x2x2 cube at 0..1, ET at (0, 0, 0). pred: ED in the 2x2x1 slab at z=0, NCR at (3, 3, 3).
    ref = np.zeros((4, 4, 4), dtype=np.uint8)
    ref[0:2, 0:2, 0:2] = 2
    ref[0, 0, 0] = 3
    pred = np.zeros((4, 4, 4), dtype=np.uint8)
    pred[0:2, 0:2, 0] = 2
    pred[3, 3, 3] = 1
    metrics = region_metrics(pred, ref, (1.0, 2.0, 5.0))
    # WT: TP 4, FP 1, FN 4, TN 55; HD95 as in test_hd95_interpolates_the_pooled_percentile
    assert metrics["wt"] == pytest.approx(
        {
            "dice": 8 / 13,
            "hd95": 5 + 0.4 * (math.sqrt(120) - 5),
            "sensitivity": 0.5,
            "specificity": 55 / 56,
            "pred_volume_cm3": 0.05,
            "ref_volume_cm3": 0.08,
        }
    )
    # TC: pred (3, 3, 3), ref (0, 0, 0): TP 0, FP 1, FN 1, TN 62, 3 voxels apart along each axis
    assert metrics["tc"] == pytest.approx(
        {
            "dice": 0.0,
            "hd95": math.sqrt(3**2 + 6**2 + 15**2),
            "sensitivity": 0.0,
            "specificity": 62 / 63,
            "pred_volume_cm3": 0.01,
            "ref_volume_cm3": 0.01,
        }
    )
    # ET: absent from pred
    assert metrics["et"] == pytest.approx(
        {
            "dice": 0.0,
            "hd95": HD95_EMPTY,
            "sensitivity": 0.0,
            "specificity": 1.0,
            "pred_volume_cm3": 0.0,
            "ref_volume_cm3": 0.01,
        }
    )


def test_region_metrics_of_empty_maps():
    empty = np.zeros((3, 4, 5), dtype=np.uint8)
    for values in region_metrics(empty, empty, (1, 1, 1)).values():
        assert values["dice"] == 1.0 and values["hd95"] == 0.0 and values["specificity"] == 1.0
        assert math.isnan(values["sensitivity"])
        assert values["pred_volume_cm3"] == values["ref_volume_cm3"] == 0.0
    tumour = empty.copy()
    tumour[1, 1, 1] = 3
    metrics = region_metrics(tumour, empty, (1, 1, 1))
    assert metrics["et"]["dice"] == 0.0 and metrics["et"]["hd95"] == HD95_EMPTY
    assert math.isnan(metrics["et"]["sensitivity"])
    with pytest.raises(ValueError, match="internal classes"):
        region_metrics(tumour + 2, empty, (1, 1, 1))


def test_dice_matches_monai_and_dice_per_case():
    torch = pytest.importorskip("torch")
    from monai.metrics import DiceMetric

    from tumorseg.training.metrics import dice_per_case

    rng = np.random.default_rng(7)
    shape = (10, 9, 8)
    preds = [random_label(rng, shape) for _ in range(6)]
    refs = [random_label(rng, shape) for _ in range(6)]
    preds[0][preds[0] == 3] = 1  # ET in the reference only
    refs[1][refs[1] == 3] = 1
    preds[1][preds[1] == 3] = 1  # ET in neither
    refs[2][refs[2] == 3] = 2  # ET in the prediction only

    def onehot(labels):
        return torch.from_numpy(np.stack([np.stack(list(region_masks(label).values())) for label in labels])).float()

    monai = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(onehot(preds), onehot(refs))
    ours = np.array(
        [[region_metrics(p, r, (1, 1, 1))[region]["dice"] for region in REGIONS] for p, r in zip(preds, refs)]
    )
    np.testing.assert_allclose(ours, monai.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours, dice_per_case(torch.from_numpy(np.stack(preds)), torch.from_numpy(np.stack(refs))))
    assert ours[0, 2] == 0.0 and ours[1, 2] == 1.0 and ours[2, 2] == 0.0


def test_one_dice_for_numbers_numpy_and_torch():
    """``dice_from_counts`` serves ``region_metrics`` (float64) and training's ``dice_per_case``
    (torch float64): both give the hand-worked values bit for bit, empty masks included."""
    torch = pytest.importorskip("torch")
    from tumorseg.training.metrics import dice_per_case

    # (intersection, prediction, reference) -> Dice
    hand = {(4, 5, 4): 8 / 9, (2, 2, 2): 1.0, (0, 0, 0): 1.0, (0, 3, 0): 0.0, (0, 0, 1): 0.0, (1, 3, 5): 0.25}
    for counts, dice in hand.items():
        assert type(dice_from_counts(*counts)) is float and dice_from_counts(*counts) == dice
    counts = [np.array(column, dtype=np.int64) for column in zip(*hand)]
    as_numpy = dice_from_counts(*counts)
    assert as_numpy.dtype == np.float64 and as_numpy.tolist() == list(hand.values())
    as_torch = dice_from_counts(*(torch.from_numpy(column).double() for column in counts))
    assert as_torch.dtype == torch.float64 and as_torch.tolist() == list(hand.values())

    # WT 4 in the reference, 5 predicted, 4 shared: 8/9; TC 2, 2, 2: 1; ET only in the reference: 0
    ref = np.array([0, 2, 2, 1, 3, 0, 0, 0], dtype=np.uint8).reshape(1, 1, 8)
    pred = np.array([0, 2, 2, 1, 1, 2, 0, 0], dtype=np.uint8).reshape(1, 1, 8)
    empty = np.zeros_like(ref)
    # then both empty (1), the prediction empty (0), the reference empty (0; ET is in neither: 1)
    expected = [[8 / 9, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    pairs = [(pred, ref), (empty, empty), (empty, ref), (pred, empty)]
    ours = [[region_metrics(p, r, (1, 1, 1))[region]["dice"] for region in REGIONS] for p, r in pairs]
    assert ours == expected
    training = dice_per_case(*(torch.from_numpy(np.stack(maps)) for maps in zip(*pairs)))
    assert training.dtype == torch.float64 and training.tolist() == expected


# ------------------------------------------------------------------------------------ command line


def shifted(label: np.ndarray) -> np.ndarray:
    """The label moved one voxel along x, background coming in."""
    moved = np.zeros_like(label)
    moved[1:] = label[:-1]
    return moved


def write_label(path: Path, internal: np.ndarray, convention: str, spacing=SPACING) -> Path:
    return write_nifti(path, from_internal(internal, convention), affine(spacing))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def assert_rows_match(rows: list[dict[str, str]], case: str, expected: dict[str, dict[str, float]]) -> None:
    case_rows = {row["region"]: row for row in rows if row["case_id"] == case}
    assert list(case_rows) == list(REGIONS)
    for region in REGIONS:
        for metric in METRICS:
            assert float(case_rows[region][metric]) == pytest.approx(expected[region][metric], nan_ok=True)


@pytest.fixture
def brats2020(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A BraTS 2020 dataset of 3 cases and predictions (0/1/2/4 values) of the first two: exact and shifted."""
    ref = tmp_path / "MICCAI_BraTS2020_TrainingData"
    ids = write_dataset(ref, "brats2020", 3, shape=SHAPE, spacing=SPACING)
    pred = tmp_path / "predictions"
    reference = internal_label(SHAPE)
    write_label(pred / f"{ids[0]}.nii.gz", reference, "brats2020")
    write_label(pred / f"{ids[1]}.nii.gz", shifted(reference), "brats2020")
    # what else a predictor leaves in its folder
    (pred / f"{ids[0]}.png").write_bytes(b"\x89PNG")
    (pred / "summary.csv").write_text("case_id,wt_cm3\n")
    write_nifti(pred / f"{ids[0]}_probabilities.nii.gz", np.zeros((*SHAPE, 4), np.float32), affine(SPACING))
    return pred, ref, ids


def test_cli_against_a_brats2020_dataset(brats2020, capsys):
    pred, ref, ids = brats2020
    assert main(["--pred", str(pred), "--ref", str(ref), "--workers", "1"]) == 1  # the third case has no prediction
    out = capsys.readouterr().out
    assert "brats2020" in out and ids[2] in out and "no prediction" in out

    reference = internal_label(SHAPE)
    rows = read_csv(pred / "metrics.csv")
    assert tuple(rows[0]) == COLUMNS
    assert [(row["case_id"], row["region"]) for row in rows] == [(c, r) for c in ids[:2] for r in REGIONS]
    exact = region_metrics(reference, reference, SPACING)
    assert all(exact[region]["dice"] == 1.0 and exact[region]["hd95"] == 0.0 for region in REGIONS)
    assert_rows_match(rows, ids[0], exact)
    moved = region_metrics(shifted(reference), reference, SPACING)
    assert moved["wt"]["hd95"] > 0 and moved["et"]["dice"] < 1  # the 4s were read as ET
    assert_rows_match(rows, ids[1], moved)

    report = json.loads((pred / "metrics.json").read_text())
    assert set(report) >= {"cases", "summary", "missing", "errors"}
    assert list(report["cases"]) == ids[:2]
    assert report["cases"][ids[1]]["tc"]["dice"] == pytest.approx(moved["tc"]["dice"])
    assert list(report["missing"]) == [ids[2]] and "no prediction" in report["missing"][ids[2]]
    assert report["errors"] == {}
    assert report["labels"] == "brats2020"
    for region in REGIONS:
        assert set(report["summary"][region]) == set(METRICS)
        dice = [exact[region]["dice"], moved[region]["dice"]]
        stats = report["summary"][region]["dice"]
        assert stats["mean"] == pytest.approx(np.mean(dice))
        assert stats["median"] == pytest.approx(np.median(dice))
        assert stats["std"] == pytest.approx(np.std(dice))

    # with the third prediction, every case is evaluated: exit 0, files where --out says
    write_label(pred / f"{ids[2]}.nii.gz", reference, "brats2020")
    out_csv = pred.parent / "eval" / "all.csv"
    assert main(["--pred", str(pred), "--ref", str(ref), "--out", str(out_csv), "--workers", "1"]) == 0
    assert len(read_csv(out_csv)) == 9
    assert json.loads(out_csv.with_suffix(".json").read_text())["missing"] == {}


def test_cli_reports_values_outside_the_convention(brats2020):
    pred, ref, ids = brats2020
    # written in the 2023 convention, but the dataset's (2020) is expected: 3 is not a 2020 value
    bad = write_label(pred / f"{ids[2]}.nii.gz", internal_label(SHAPE), "brats2023")
    result = evaluate_folder(pred, ref, progress=False)
    assert result.labels == "brats2020"
    assert list(result.errors) == [ids[2]]
    assert str(bad) in result.errors[ids[2]] and "[3]" in result.errors[ids[2]]
    assert result.case_ids == ids[:2] and not result.ok


def test_cli_reports_a_shape_mismatch_and_goes_on(tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    label = internal_label(SHAPE)
    for name in ("a", "b"):
        write_label(ref / f"{name}.nii.gz", label, "brats2023")
    wrong = write_label(pred / "a.nii.gz", internal_label((13, 10, 8)), "brats2023")
    write_label(pred / "b.nii", label, "brats2023")
    assert main(["--pred", str(pred), "--ref", str(ref), "--labels", "brats2023", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "shape mismatch" in out
    report = json.loads((pred / "metrics.json").read_text())
    message = report["errors"]["a"]
    assert str(wrong) in message and str(ref / "a.nii.gz") in message
    assert "(13, 10, 8)" in message and "(12, 10, 8)" in message
    assert list(report["cases"]) == ["b"] and report["cases"]["b"]["wt"]["dice"] == 1.0


def test_cli_lists_cases_without_counterpart(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    label = internal_label(SHAPE)
    for name in ("a", "b"):
        write_label(ref / f"{name}.nii.gz", label, "brats2023")
    for name in ("b", "c"):
        write_label(pred / f"{name}.nii.gz", label, "brats2023")
    result = evaluate_folder(pred, ref, progress=False)
    assert result.case_ids == ["b"]
    assert set(result.missing) == {"a", "c"}
    assert result.missing["a"].startswith("no prediction") and result.missing["c"].startswith("no reference")


def test_cases_limit_the_evaluation(brats2020, tmp_path, capsys):
    """One fold's validation cases (a run's split.json): the other references are not reported missing."""
    pred, ref, ids = brats2020
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [ids[2]], "val": ids[:2]}))
    assert main(["--pred", str(pred), "--ref", str(ref), "--cases", str(split), "--workers", "1"]) == 0
    assert json.loads((pred / "metrics.json").read_text())["missing"] == {}
    assert {row["case_id"] for row in read_csv(pred / "metrics.csv")} == set(ids[:2])
    listed = tmp_path / "cases.txt"
    listed.write_text(f"# one id per line\n{ids[0]}\n{ids[2]}\n")
    result = evaluate_folder(pred, ref, cases=[ids[0], ids[2]], progress=False)
    assert result.case_ids == [ids[0]] and list(result.missing) == [ids[2]]
    assert main(["--pred", str(pred), "--ref", str(ref), "--cases", str(listed), "--workers", "1"]) == 1
    assert main(["--pred", str(pred), "--ref", str(ref), "--cases", str(tmp_path / "none.json")]) == 2
    assert "none.json cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("convention", "expected"), [("brats2020", "brats2020"), ("brats2023", "brats2023"), ("msd", "brats2023")]
)
def test_auto_labels_of_plain_folders(tmp_path, convention, expected):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    label = internal_label(SHAPE)
    write_label(ref / "a.nii.gz", label, convention)
    write_label(pred / "a.nii.gz", label, convention)
    write_label(pred / "b.nii.gz", shifted(label), convention)
    write_label(ref / "b.nii.gz", label, convention)
    result = evaluate_folder(pred, ref, progress=False)
    assert result.labels == expected and "chosen" in result.labels_reason
    assert not result.errors and not result.missing
    rows = {(row["case_id"], row["region"]): row for row in result.rows}
    if convention == "msd":
        # read as 2023 values, MSD's edema (1) and necrosis (2) swap: TC is then edema + ET
        assert rows["a", "tc"]["ref_volume_cm3"] != pytest.approx(
            region_metrics(label, label, SPACING)["tc"]["ref_volume_cm3"]
        )
    else:
        assert rows["a", "et"]["dice"] == 1.0 and rows["a", "et"]["ref_volume_cm3"] > 0
        assert rows["b", "wt"]["hd95"] == pytest.approx(region_metrics(shifted(label), label, SPACING)["wt"]["hd95"])
    # given explicitly, the convention is used as is
    explicit = evaluate_folder(pred, ref, labels=convention, out=tmp_path / "explicit.csv", progress=False)
    assert explicit.labels == convention and explicit.rows[0]["dice"] == 1.0
    expected_b = region_metrics(shifted(label), label, SPACING)
    assert [row["dice"] for row in explicit.rows[3:]] == pytest.approx([expected_b[r]["dice"] for r in REGIONS])


def test_single_prediction_file_against_a_dataset(brats2020):
    pred, ref, ids = brats2020
    result = evaluate_folder(pred / f"{ids[1]}.nii.gz", ref, progress=False)
    assert result.ok and result.case_ids == [ids[1]]
    assert result.csv_path == pred / f"{ids[1]}_metrics.csv" and result.csv_path.is_file()


def test_unusable_inputs_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--pred", str(tmp_path / "nowhere"), "--ref", str(tmp_path)]) == 2
    assert main(["--pred", str(tmp_path / "empty"), "--ref", str(tmp_path)]) == 2
    write_label(tmp_path / "pred" / "a.nii.gz", internal_label(SHAPE), "brats2023")
    assert main(["--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "empty")]) == 2
    assert "error:" in capsys.readouterr().err


def test_module_runs_cases_in_parallel(brats2020, tmp_path):
    pred, ref, ids = brats2020
    write_label(pred / f"{ids[2]}.nii.gz", shifted(shifted(internal_label(SHAPE))), "brats2020")
    serial = evaluate_folder(pred, ref, out=tmp_path / "serial.csv", progress=False)
    command = [sys.executable, "-m", "tumorseg.evaluate", "--pred", str(pred), "--ref", str(ref)]
    command += ["--workers", "2", "--out", str(tmp_path / "parallel.csv")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "brats2020" in done.stdout and "WT" in done.stdout
    assert read_csv(tmp_path / "parallel.csv") == read_csv(tmp_path / "serial.csv")
    assert len(serial.rows) == 9 and case_id("brats2020", 3) in serial.case_ids

"""Tests of ``tumorseg.evaluate.lesionwise``: the robust Hausdorff distance against DeepMind's
``surface-distance`` package, the lesion-wise scores against hand-worked cases and against the
BraTS 2023 rules carried out step by step over the whole volume, and ``--metrics lesionwise`` of
the command line end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from brats_fixtures import affine, write_nifti
from scipy.ndimage import binary_dilation, gaussian_filter, generate_binary_structure, label

from tumorseg.evaluate import (
    HD95_PENALTY,
    LESIONWISE_COLUMNS,
    TASKS,
    EvaluationError,
    evaluate_folder,
    lesionwise_case,
    lesionwise_region,
    main,
    robust_hausdorff,
)
from tumorseg.labels import REGION_CLASSES, REGIONS

ANISOTROPIC = (1.0, 1.5, 3.0)
SHAPE = (30, 24, 20)


@pytest.fixture
def deepmind(monkeypatch):
    """DeepMind's ``surface_distance`` (PyPI ``surface-distance``), which still spells numpy's ``np.Inf``."""
    if not hasattr(np, "Inf"):
        monkeypatch.setattr(np, "Inf", np.inf, raising=False)
    return pytest.importorskip("surface_distance")


def deepmind_hd95(deepmind, pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    distances = deepmind.compute_surface_distances(ref.astype(bool), pred.astype(bool), spacing)
    return float(deepmind.compute_robust_hausdorff(distances, 95))


def cube(shape, corner, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(c, c + s) for c, s in zip(corner, size))] = True
    return mask


def blobs(rng: np.random.Generator, shape, quantile: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(1.0, 2.0))
    return field > np.quantile(field, quantile)


def ellipsoids(rng: np.random.Generator, shape, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grid = np.indices(shape).reshape(3, -1).T
    mask = np.zeros(len(grid), dtype=bool)
    for centre, radius in zip(centres, radii):
        mask |= (((grid - centre) / radius) ** 2).sum(axis=1) <= 1
    return mask.reshape(shape)


def lesion_case(rng: np.random.Generator, shape=(40, 36, 28)) -> tuple[np.ndarray, np.ndarray]:
    """Reference lesions of 1-4 voxels' radius, some close enough to merge; a prediction that finds
    most of them roughly (moved, resized) and adds a few of its own."""
    centres = rng.uniform(0, np.array(shape) - 1, size=(9, 3))
    radii = rng.uniform(0.8, 4.0, size=(9, 3))
    found = rng.random(9) < 0.7
    extra = rng.uniform(0, np.array(shape) - 1, size=(3, 3))
    moved = np.vstack([centres[found] + rng.integers(-1, 2, size=(found.sum(), 3)), extra])
    resized = np.vstack([radii[found] * rng.uniform(0.7, 1.3, size=(found.sum(), 3)), rng.uniform(0.8, 2.5, (3, 3))])
    return ellipsoids(rng, shape, moved, resized), ellipsoids(rng, shape, centres, radii)


def scores(result) -> tuple[float, float, int, int, int]:
    return result.lesion_dice, result.lesion_hd95, result.num_tp, result.num_fp, result.num_fn


def brats2023_rules(deepmind, pred, ref, spacing, task: str) -> tuple[float, float, int, int, int]:
    """The 2023 rules carried out literally over the whole volume: each lesion dilated on its own,
    its components picked with ``np.isin``, the HD95 from DeepMind's package."""
    iterations, threshold = TASKS[task].dilation, TASKS[task].min_volume_mm3
    structure18, structure26 = generate_binary_structure(3, 2), generate_binary_structure(3, 3)
    components, _ = label(pred, structure26)
    dilated, n_lesions = label(binary_dilation(ref, structure18, iterations=iterations), structure26)
    matched_any, kept, tp, fn = set(), [], 0, 0
    for k in range(1, n_lesions + 1):
        lesion = ref & (dilated == k)
        reach = binary_dilation(lesion, structure18, iterations=iterations)
        matched = set(np.unique(components[reach]).tolist()) - {0}
        matched_any |= matched
        predicted = np.isin(components, sorted(matched))
        dice = 2 * np.sum(lesion & predicted) / (lesion.sum() + predicted.sum())
        hd95 = deepmind_hd95(deepmind, predicted, lesion, spacing)
        if lesion.sum() * spacing[0] * spacing[1] * spacing[2] > threshold:
            kept.append((dice, HD95_PENALTY if math.isinf(hd95) else hd95))
            tp, fn = tp + bool(matched), fn + (not matched)
    fp = len(set(np.unique(components).tolist()) - {0} - matched_any)
    count = len(kept) + fp
    if count == 0:
        return 1.0, 0.0, tp, fp, fn
    return sum(d for d, _ in kept) / count, (sum(h for _, h in kept) + HD95_PENALTY * fp) / count, tp, fp, fn


# ---------------------------------------------------------------------------------- robust Hausdorff


@pytest.mark.parametrize("seed", range(8))
def test_robust_hausdorff_matches_deepmind(deepmind, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(10, 22, size=3))
    spacing = ANISOTROPIC if seed % 2 else tuple(float(s) for s in rng.uniform(0.5, 3.0, size=3))
    pred, ref = blobs(rng, shape, rng.uniform(0.6, 0.95)), blobs(rng, shape, rng.uniform(0.6, 0.95))
    if seed == 3:  # one voxel against a blob
        pred = cube(shape, (2, 3, 4), (1, 1, 1))
    expected = deepmind_hd95(deepmind, pred, ref, spacing)
    assert robust_hausdorff(pred, ref, spacing) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert robust_hausdorff(ref, pred, spacing) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_robust_hausdorff_is_not_medpys(deepmind):
    from tumorseg.evaluate import hd95

    # a cube and the same grown by one voxel on every side: 3.16 mm here, 3.35 mm for medpy
    pred, ref = cube(SHAPE, (4, 4, 4), (6, 6, 6)), cube(SHAPE, (3, 3, 3), (8, 8, 8))
    ours = robust_hausdorff(pred, ref, ANISOTROPIC)
    assert ours == pytest.approx(deepmind_hd95(deepmind, pred, ref, ANISOTROPIC), abs=1e-9)
    assert ours == pytest.approx(3.162, abs=1e-3) and hd95(pred, ref, ANISOTROPIC) == pytest.approx(3.354, abs=1e-3)


def test_robust_hausdorff_of_empty_masks():
    empty, full = np.zeros(SHAPE, bool), cube(SHAPE, (1, 1, 1), (3, 3, 3))
    assert robust_hausdorff(empty, full, ANISOTROPIC) == math.inf
    assert robust_hausdorff(full, empty, ANISOTROPIC) == math.inf
    assert robust_hausdorff(full, full, ANISOTROPIC) == 0.0


# ------------------------------------------------------------------------------- lesion-wise, by hand


def test_false_positive_far_away():
    ref = cube(SHAPE, (2, 2, 2), (4, 4, 4))
    pred = ref | cube(SHAPE, (20, 15, 12), (2, 2, 2))
    assert scores(lesionwise_region(pred, ref, (1, 1, 1))) == (0.5, 187.0, 1, 1, 0)


def test_missed_lesions_above_and_below_the_threshold():
    found, missed = cube(SHAPE, (1, 1, 1), (4, 4, 4)), cube(SHAPE, (20, 1, 1), (4, 4, 4))
    small = cube(SHAPE, (1, 15, 12), (3, 3, 3))  # 27 mm^3 <= 50: not scored
    result = lesionwise_region(found, found | missed | small, (1, 1, 1))
    assert scores(result) == (0.5, 187.0, 1, 0, 1)
    assert [(lesion.volume_mm3, lesion.kept, lesion.matched) for lesion in result.lesions] == [
        (64.0, True, 1),
        (27.0, False, 0),
        (64.0, True, 0),
    ]


def test_a_lesion_of_exactly_the_threshold_is_dropped():
    ref = cube(SHAPE, (2, 2, 2), (5, 5, 2))  # 50 voxels of 1 mm^3
    assert scores(lesionwise_region(np.zeros(SHAPE, bool), ref, (1, 1, 1))) == (1.0, 0.0, 0, 0, 0)
    assert scores(lesionwise_region(np.zeros(SHAPE, bool), ref, (1, 1, 1.02))) == (0.0, HD95_PENALTY, 0, 0, 1)


@pytest.mark.parametrize(
    ("task", "offset", "merged"),
    [
        # 3 iterations of the 18-neighbourhood reach 3 voxels along an axis: the dilated masks of
        # voxels 7 apart touch (3 + 3 + 1 face step), 8 apart they do not
        ("GLI", (7, 0, 0), True),
        ("GLI", (8, 0, 0), False),
        # along the diagonal they reach (2, 2, 2) but not (3, 3, 3): merged up to (5, 5, 5),
        # where a 26-neighbourhood dilation would merge up to (7, 7, 7)
        ("GLI", (5, 5, 5), True),
        ("GLI", (6, 6, 6), False),
        # one iteration reaches (1, 1, 0) but not (1, 1, 1)
        ("MET", (3, 0, 0), True),
        ("MET", (4, 0, 0), False),
        ("MET", (3, 3, 0), True),
        ("MET", (4, 4, 0), False),
        ("MET", (3, 3, 3), False),
    ],
)
def test_reference_components_merged_by_the_dilation(task, offset, merged):
    ref = np.zeros(SHAPE, bool)
    ref[5, 5, 5] = ref[5 + offset[0], 5 + offset[1], 5 + offset[2]] = True
    result = lesionwise_region(np.zeros(SHAPE, bool), ref, (1, 1, 1), task)
    assert len(result.lesions) == (1 if merged else 2)


def test_merged_components_are_scored_as_one_lesion():
    first, second = cube(SHAPE, (2, 2, 2), (4, 4, 4)), cube(SHAPE, (12, 2, 2), (4, 4, 4))  # 6 voxels apart
    result = lesionwise_region(first, first | second, (1, 1, 1))
    assert scores(result)[2:] == (1, 0, 0) and len(result.lesions) == 1
    assert result.lesion_dice == pytest.approx(2 * 64 / (128 + 64))
    far = cube(SHAPE, (13, 2, 2), (4, 4, 4))  # 7 voxels apart: two lesions, one missed
    assert scores(lesionwise_region(first, first | far, (1, 1, 1))) == (0.5, 187.0, 1, 0, 1)


def test_the_dilation_counts_voxels_whatever_the_spacing():
    ref = np.zeros(SHAPE, bool)
    ref[5, 5, 5] = ref[12, 5, 5] = True
    assert len(lesionwise_region(np.zeros(SHAPE, bool), ref, (4.0, 1.0, 1.0)).lesions) == 1


def test_both_empty_and_one_empty():
    empty, lesion = np.zeros(SHAPE, bool), cube(SHAPE, (2, 2, 2), (4, 4, 4))
    assert scores(lesionwise_region(empty, empty, (1, 1, 1))) == (1.0, 0.0, 0, 0, 0)
    two = lesion | cube(SHAPE, (20, 15, 12), (2, 2, 2))
    assert scores(lesionwise_region(two, empty, (1, 1, 1))) == (0.0, HD95_PENALTY, 0, 2, 0)
    assert scores(lesionwise_region(empty, lesion, (1, 1, 1))) == (0.0, HD95_PENALTY, 0, 0, 1)
    small = cube(SHAPE, (2, 2, 2), (3, 3, 3))
    assert scores(lesionwise_region(empty, small, (1, 1, 1))) == (1.0, 0.0, 0, 0, 0)


def test_a_component_on_a_small_lesion_is_no_false_positive():
    big, small = cube(SHAPE, (2, 2, 2), (4, 4, 4)), cube(SHAPE, (20, 2, 2), (3, 3, 3))
    assert scores(lesionwise_region(big | small, big | small, (1, 1, 1))) == (1.0, 0.0, 1, 0, 0)
    # near the small lesion without touching it, but inside its 3-voxel reach: matched all the same
    near = cube(SHAPE, (20, 7, 2), (2, 2, 2))
    assert scores(lesionwise_region(big | near, big | small, (1, 1, 1))) == (1.0, 0.0, 1, 0, 0)
    # out of reach: a false positive
    away = cube(SHAPE, (20, 9, 2), (2, 2, 2))
    assert scores(lesionwise_region(big | away, big | small, (1, 1, 1))) == (0.5, 187.0, 1, 1, 0)


def test_spacing_decides_which_lesions_are_scored():
    big, small = cube(SHAPE, (2, 2, 2), (4, 4, 4)), cube(SHAPE, (20, 2, 2), (3, 3, 3))
    # 27 voxels: 27 mm^3 at 1 mm, 60.75 mm^3 at 1 x 1.5 x 1.5 mm
    assert scores(lesionwise_region(big, big | small, (1, 1, 1))) == (1.0, 0.0, 1, 0, 0)
    result = lesionwise_region(big, big | small, (1.0, 1.5, 1.5))
    assert scores(result) == (0.5, 187.0, 1, 0, 1)
    assert [lesion.volume_mm3 for lesion in result.lesions] == [144.0, 60.75]
    # MET scores lesions above 2 mm^3: the small one at 1 mm too
    assert scores(lesionwise_region(big, big | small, (1, 1, 1), "MET")) == (0.5, 187.0, 1, 0, 1)


def test_a_shifted_lesion(deepmind):
    ref = cube(SHAPE, (4, 4, 4), (4, 4, 4))
    pred = cube(SHAPE, (5, 4, 4), (4, 4, 4))
    result = lesionwise_region(pred, ref, ANISOTROPIC)
    assert result.lesion_dice == pytest.approx(2 * 48 / 128)
    assert result.lesion_hd95 == pytest.approx(deepmind_hd95(deepmind, pred, ref, ANISOTROPIC), abs=1e-9)
    assert result.lesion_hd95 == pytest.approx(1.0)  # the faces across x are 1 mm apart


def test_one_component_on_two_lesions():
    first, second = cube(SHAPE, (2, 2, 2), (4, 4, 4)), cube(SHAPE, (20, 2, 2), (4, 4, 4))
    bridge = cube(SHAPE, (2, 2, 2), (22, 4, 4))  # one component over both, and the gap
    result = lesionwise_region(bridge, first | second, (1, 1, 1))
    assert [lesion.matched for lesion in result.lesions] == [1, 1]
    assert result.lesion_dice == pytest.approx(2 * 64 / (64 + 22 * 16))
    assert scores(result)[2:] == (2, 0, 0)


# each with merged and unmatched lesions and false positives; GLI at 1 mm drops 1 and 4 small lesions
@pytest.mark.parametrize(
    ("seed", "task", "spacing"),
    [
        (0, "GLI", (1, 1, 1)),
        (7, "GLI", (1, 1, 1)),
        (9, "GLI", ANISOTROPIC),
        (3, "MET", (1, 1, 1)),
        (2, "MEN", ANISOTROPIC),
    ],
)
def test_random_cases_follow_the_2023_rules(deepmind, seed, task, spacing):
    pred, ref = lesion_case(np.random.default_rng(100 + seed))
    expected = brats2023_rules(deepmind, pred, ref, spacing, task)
    result = lesionwise_region(pred, ref, spacing, task)
    assert len(result.lesions) > 1 and result.num_fp + result.num_tp > 1  # a case worth the name
    assert scores(result)[2:] == expected[2:]
    assert scores(result)[:2] == pytest.approx(expected[:2], rel=1e-9, abs=1e-9)


def test_regions_come_from_the_caller():
    ref = np.zeros(SHAPE, np.uint8)
    ref[2:8, 2:8, 2:8] = 2
    ref[3:7, 3:7, 3:7] = 3
    pred = np.zeros_like(ref)
    pred[2:8, 2:8, 2:8] = 2  # the enhancing tumour is missed
    default = lesionwise_case(pred, ref, (1, 1, 1))
    assert list(default) == list(REGION_CLASSES)
    assert scores(default["wt"]) == (1.0, 0.0, 1, 0, 0)
    assert scores(default["et"]) == (0.0, HD95_PENALTY, 0, 0, 1)
    custom = lesionwise_case(pred, ref, (1, 1, 1), regions={"ed": (2,), "rc": (4,)})
    assert list(custom) == ["ed", "rc"]
    assert custom["ed"].num_tp == 1 and scores(custom["rc"]) == (1.0, 0.0, 0, 0, 0)


def test_bad_arguments():
    mask = np.zeros(SHAPE, bool)
    with pytest.raises(ValueError, match="unknown BraTS task 'XYZ'"):
        lesionwise_region(mask, mask, (1, 1, 1), "XYZ")
    with pytest.raises(ValueError, match="same shape"):
        lesionwise_region(mask, mask[1:], (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        lesionwise_region(mask, mask, (1, 1))


# ------------------------------------------------------------------------------------ command line


def write_case(folder: Path, case_id: str, label: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    return write_nifti(folder / f"{case_id}.nii.gz", label.astype(np.uint8), affine(spacing))


@pytest.fixture
def cases(tmp_path):
    """Three BraTS 2023 cases (labels 0-3) and their predictions: exact, with a false positive, and one lesion missed."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[2:8, 2:8, 2:8], ref[3:7, 3:7, 3:7] = 2, 3
    second = ref.copy()
    second[18:24, 14:20, 10:16] = 1
    fp = ref.copy()
    fp[25:27, 20:22, 16:18] = 3
    pairs = {"case_a": (ref, ref), "case_b": (fp, ref), "case_c": (ref, second)}
    for case_id, (pred, reference) in pairs.items():
        write_case(tmp_path / "pred", case_id, pred)
        write_case(tmp_path / "ref", case_id, reference)
    return tmp_path, pairs


def test_cli_writes_the_lesionwise_csv_and_json(cases, capsys):
    root, pairs = cases
    out = root / "out" / "lesions.csv"
    argv = ["--pred", str(root / "pred"), "--ref", str(root / "ref"), "--labels", "brats2023"]
    assert main([*argv, "--metrics", "lesionwise", "--out", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "lesion-wise" in printed and "GLI" in printed

    with open(out, newline="") as file:
        rows = list(csv.DictReader(file))
    assert (
        tuple(rows[0])
        == LESIONWISE_COLUMNS
        == (
            "case_id",
            "region",
            "lesion_dice",
            "lesion_hd95",
            "num_tp",
            "num_fp",
            "num_fn",
        )
    )
    assert [(row["case_id"], row["region"]) for row in rows] == [(c, r) for c in pairs for r in REGIONS]
    values = {(row["case_id"], row["region"]): row for row in rows}
    expected = {
        # exact; a 2x2x2 ET (and so TC, WT) component far away; a missed NCR lesion (TC, WT)
        "case_a": {"wt": (1.0, 0.0, 1, 0, 0), "tc": (1.0, 0.0, 1, 0, 0), "et": (1.0, 0.0, 1, 0, 0)},
        "case_b": {r: (0.5, 187.0, 1, 1, 0) for r in REGIONS},
        "case_c": {"wt": (0.5, 187.0, 1, 0, 1), "tc": (0.5, 187.0, 1, 0, 1), "et": (1.0, 0.0, 1, 0, 0)},
    }
    for case_id, regions in expected.items():
        for region, (dice, hd95, tp, fp, fn) in regions.items():
            row = values[case_id, region]
            assert float(row["lesion_dice"]) == pytest.approx(dice) and float(row["lesion_hd95"]) == pytest.approx(hd95)
            assert (int(row["num_tp"]), int(row["num_fp"]), int(row["num_fn"])) == (tp, fp, fn)

    report = json.loads(out.with_suffix(".json").read_text())
    assert report["metrics"] == "lesionwise" and report["task"] == "GLI"
    assert report["cases"]["case_b"]["et"]["num_fp"] == 1
    assert report["summary"]["wt"]["num_fn"] == {"total": 1}
    assert report["summary"]["wt"]["lesion_dice"]["mean"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)


def test_default_output_keeps_the_volume_metrics(cases):
    root, _ = cases
    result = evaluate_folder(root / "pred", root / "ref", labels="brats2023", progress=False, metrics="lesionwise")
    assert result.csv_path == root / "pred" / "metrics_lesionwise.csv" and result.csv_path.exists()
    assert result.task == "GLI" and result.ok
    with pytest.raises(EvaluationError, match="unknown BraTS task 'GBM'"):
        evaluate_folder(root / "pred", root / "ref", metrics="lesionwise", task="GBM")
    with pytest.raises(EvaluationError, match="unknown metrics 'lesion'"):
        evaluate_folder(root / "pred", root / "ref", metrics="lesion")


def test_cli_rejects_a_task_without_lesionwise(cases, capsys):
    root, _ = cases
    with pytest.raises(SystemExit) as exit_info:
        main(["--pred", str(root / "pred"), "--ref", str(root / "ref"), "--task", "MET"])
    assert exit_info.value.code == 2 and "--metrics lesionwise" in capsys.readouterr().err


def test_voxel_size_mismatch_names_both_files(cases):
    root, pairs = cases
    pred = write_case(root / "pred", "case_a", pairs["case_a"][0], spacing=(1.0, 1.0, 2.0))
    result = evaluate_folder(root / "pred", root / "ref", labels="brats2023", progress=False, metrics="lesionwise")
    assert list(result.errors) == ["case_a"] and not result.ok
    message = result.errors["case_a"]
    assert "voxel size mismatch" in message and str(pred) in message and str(root / "ref" / "case_a.nii.gz") in message
    assert result.case_ids == ["case_b", "case_c"]

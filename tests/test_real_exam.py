"""experiments/real_exam.py: its table and metrics.json hold what tumorseg.evaluate gives for the
segmentations it writes (the model's and the FLAIR-threshold baseline's), on a tiny phantom, on a
folder of tiny cases and on the real labelled exams of ../shared/data; and the baseline itself."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from brats_fixtures import EXAM_2020, REAL_SHAPE, SHARED_DATA, case_id, write_case
from test_predict import save_checkpoint, stand_in
from test_pretrained import NAME, NOTICE, write_registry
from train_helpers import experiment_script

from tumorseg.checkpoints import REGISTRY_ENV
from tumorseg.evaluate import evaluate_folder, flair_threshold
from tumorseg.labels import REGIONS
from tumorseg.phantoms import generate_dataset
from tumorseg.training.module import SegmentationModule


@pytest.fixture(scope="module")
def real_exam():
    yield from experiment_script("real_exam")


def table_rows(printed: str, first_cells: int = 1) -> dict[tuple[str, ...], list[str]]:
    """The cells of the printed Markdown tables, by their leading cells (method, and statistic)."""
    rows = {}
    for line in printed.splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows.setdefault(tuple(cells[:first_cells]), cells[first_cells:])
    return rows


def evaluated(folder: Path, case: Path, tmp_path: Path) -> dict[str, dict]:
    """tumorseg.evaluate's rows of the segmentations in ``folder``: case id -> region -> metrics."""
    result = evaluate_folder(folder, case, out=tmp_path / "metrics.csv", progress=False)
    assert not result.missing and not result.errors
    by_case = {}
    for row in result.rows:
        by_case.setdefault(row["case_id"], {})[row["region"]] = row
    return by_case


def check_against_evaluate(real_exam, out: Path, case: Path, printed: str, tmp_path: Path) -> dict:
    """metrics.json and the table equal tumorseg.evaluate's metrics of the segmentations written in
    ``out``: the model's in ``out``, the baseline's (WT only, TC and ET "-") in ``out/baseline``."""
    saved = json.loads((out / "metrics.json").read_text())
    model = evaluated(out, case, tmp_path / "model")[saved["case_id"]]
    baseline = evaluated(out / "baseline", case, tmp_path / "baseline")[saved["case_id"]]
    assert set(model) == set(REGIONS) == set(saved["regions"])
    assert set(saved["baseline"]["regions"]) == {"wt"}
    table = table_rows(printed)
    name = model_row(saved)
    headers = [(r, m) for m in ("dice", "hd95") for r in REGIONS] + [(r, "pred_volume_cm3") for r in REGIONS]
    for region in REGIONS:
        for metric in real_exam.COLUMNS:
            assert saved["regions"][region][metric] == model[region][metric], (region, metric)
        for column, (r, metric) in enumerate(headers):
            if r == region:
                assert table[(name,)][column] == real_exam.format_value(metric, model[region][metric])
                expected = baseline[region][metric] if region == "wt" else None
                assert table[(real_exam.BASELINE,)][column] == real_exam.format_value(metric, expected)
                if metric == "pred_volume_cm3":
                    assert table[("reference",)][column] == real_exam.format_value(
                        metric, model[region]["ref_volume_cm3"]
                    )
    for metric in real_exam.COLUMNS:
        assert saved["baseline"]["regions"]["wt"][metric] == baseline["wt"][metric], metric
    assert (out / "overlay.png").stat().st_size > 5_000
    assert (out / "summary.md").read_text().count(f"| {real_exam.BASELINE} |") == 1
    return saved


def model_row(saved: dict) -> str:
    """The name of the model's row in the table."""
    if saved["shipped_model"]:
        return f"shipped model {saved['shipped_model']['name']}"
    paths = [m["path"] for m in saved["models"]]
    return paths[0] if len(paths) == 1 else f"ensemble of {len(paths)} checkpoints"


def test_a_phantom_measured_with_an_ensemble_and_with_the_shipped_model(real_exam, tmp_path, capsys, monkeypatch):
    (case,) = generate_dataset(tmp_path / "data", 1, shape=(32, 32, 24), progress=False)
    torch.manual_seed(0)
    untrained = SegmentationModule({"name": "arunet3d", "features": [4, 8, 16]}, inference={"roi_size": 16})
    a = save_checkpoint(untrained, tmp_path / "untrained.ckpt")
    b = stand_in(tmp_path / "core.ckpt", (10.0, 10.0, -10.0))  # TC, not ET

    out = tmp_path / "ensemble"
    assert real_exam.main(["--ckpt", str(a), str(b), "--case", str(case), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    saved = check_against_evaluate(real_exam, out, case, printed, tmp_path / "a")
    assert [m["path"] for m in saved["models"]] == [str(a), str(b)] and saved["shipped_model"] is None
    assert NOTICE not in printed and "segmented in" in printed
    assert set(saved["timings_s"]) == {
        "load_models", "read_baseline", "baseline", "read_preprocess", "inference", "score", "write", "total"
    }  # fmt: skip

    monkeypatch.setenv(REGISTRY_ENV, str(write_registry(tmp_path / "weights", b)))
    out = tmp_path / "shipped"
    assert real_exam.main(["--case", str(case), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    saved = check_against_evaluate(real_exam, out, case, printed, tmp_path / "b")
    assert printed.count(NOTICE) == 1 and saved["shipped_model"]["name"] == NAME
    assert saved["regions"]["et"]["pred_volume_cm3"] == 0.0  # the stand-in's TC without ET


def test_a_missing_case_folder_or_model_ends_with_exit_status_2(real_exam, tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nowhere"
    assert real_exam.main(["--case", str(missing), "--ckpt", str(tmp_path / "m.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"error: --case {missing}: no such folder. Give a labelled case folder (a BraTS training case: its four "
        f"images and its label) with --case DIR."
    )
    (case,) = generate_dataset(tmp_path / "data", 1, shape=(32, 32, 24), progress=False)
    registry = write_registry(tmp_path / "weights", None)
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    assert real_exam.main(["--case", str(case)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {registry} lists no shipped model: give a checkpoint with --ckpt PATH."
    )


@pytest.mark.skipif(not (SHARED_DATA / EXAM_2020).is_dir(), reason=f"no real labelled exam in {SHARED_DATA}")
def test_the_real_labelled_exam_end_to_end(real_exam, tmp_path, capsys):
    """A stand-in model (ET over the brain's box) on the real 240x240x155 exam, in well under a minute on a CPU."""
    case = SHARED_DATA / EXAM_2020
    ckpt = stand_in(tmp_path / "m.ckpt", (10.0, 10.0, 10.0), roi=64)
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpt), "--case", str(case), "--out", str(out), "--overlap", "0", "--device", "cpu"]
    assert real_exam.main(args) == 0
    printed = capsys.readouterr().out
    saved = check_against_evaluate(real_exam, out, case, printed, tmp_path)
    # the label's volumes, as ../shared/data/README.md gives them
    volumes = {region: saved["regions"][region]["ref_volume_cm3"] for region in REGIONS}
    assert volumes == pytest.approx({"wt": 30.2, "tc": 9.3, "et": 6.8}, abs=0.05)
    assert saved["spacing_mm"] == [1.0, 1.0, 1.0]
    assert nib.load(out / f"{case.name}.nii.gz").shape == REAL_SHAPE
    # the baseline, as the project measured it before building it (brain: the positive FLAIR; 6-connected)
    assert saved["baseline"]["regions"]["wt"]["dice"] == pytest.approx(0.7510, abs=1e-4)
    assert saved["baseline"]["regions"]["wt"]["pred_volume_cm3"] == pytest.approx(19.11, abs=0.01)


# ------------------------------------------------------------------------ the FLAIR-threshold baseline


def blobs_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy FLAIR (healthy brain about 100) with a bright ball of radius 5 and a smaller one of
    radius 2 far from it, zero outside a box of brain; the FLAIR, the brain and the larger ball."""
    shape = (40, 36, 30)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"))
    big = ((grid - np.array([12, 12, 12])[:, None, None, None]) ** 2).sum(0) <= 25
    small = ((grid - np.array([28, 26, 20])[:, None, None, None]) ** 2).sum(0) <= 4
    brain = np.zeros(shape, dtype=bool)
    brain[2:-2, 2:-2, 2:-2] = True
    rng = np.random.default_rng(seed)
    flair = np.where(brain, 100 + rng.normal(0, 5, shape) + 200 * (big | small), 0.0)
    return flair, brain, big


def test_the_baseline_keeps_the_larger_bright_blob_whatever_the_intensity_scale():
    flair, brain, big = blobs_case()
    mask = flair_threshold(flair, brain)
    assert mask.dtype == bool and np.array_equal(mask, big)  # the smaller ball, as bright, is left out
    assert np.array_equal(flair_threshold(flair), mask)  # the brain defaults to the positive FLAIR
    # a threshold on z-scores: any scale of the intensities (and, with the brain given, any offset)
    for factor in (1e-3, 0.37, 3.0, 32767 / flair.max()):
        assert np.array_equal(flair_threshold(flair * factor), mask), factor
    assert np.array_equal(flair_threshold(flair * 2.5 - 40.0, brain), mask)
    # (18, 13, 13) touches the ball by a corner only, at (17, 12, 12): not joined (voxels join by a face)
    assert big[17, 12, 12] and big[17:20, 12:15, 12:15].sum() == 1
    corner = flair.copy()
    corner[18, 13, 13] = 300.0
    assert np.array_equal(flair_threshold(corner, brain), big)
    face = flair.copy()
    face[18, 12, 12] = 300.0
    expected = big.copy()
    expected[18, 12, 12] = True
    assert np.array_equal(flair_threshold(face, brain), expected)


def test_the_baseline_of_a_featureless_brain_is_empty_and_bad_shapes_are_refused():
    assert not flair_threshold(np.full((8, 8, 8), 7.0)).any()  # std 0
    assert not flair_threshold(np.zeros((8, 8, 8))).any()  # no brain
    with pytest.raises(ValueError, match="3D FLAIR"):
        flair_threshold(np.ones((8, 8)))
    with pytest.raises(ValueError, match="brain mask has shape"):
        flair_threshold(np.ones((8, 8, 8)), np.ones((8, 8, 7), dtype=bool))


# ------------------------------------------------------------------------------------ whole folders


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_a_folder_is_scored_case_by_case_with_the_mean_and_median_of_each_method(real_exam, tmp_path, capsys):
    """Three tiny BraTS 2018 cases of different sizes (so that the stand-in's Dice differs between
    them): a CSV row per case, method and region; the tables' mean and median are numpy's over it."""
    root = tmp_path / "brats18"
    shapes = [(24, 20, 16), (28, 22, 16), (20, 24, 18)]
    ids = [case_id("brats2018", i) for i in range(1, 4)]
    for i, (case, shape) in enumerate(zip(ids, shapes), start=1):
        write_case(root, "brats2018", case, shape=shape, seed=i)
    ckpt = stand_in(tmp_path / "m.ckpt", (10.0, 10.0, -10.0))  # TC over the brain's box, no ET
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpt), "--case", str(root), "--out", str(out), "--device", "cpu", "--lesionwise"]
    assert real_exam.main(args) == 0
    printed = capsys.readouterr().out

    rows = read_csv(out / "cases.csv")
    assert list(rows[0]) == ["case_id", "method", "region", *real_exam.METRICS, *real_exam.LESIONWISE_METRICS]
    assert [(r["case_id"], r["method"], r["region"]) for r in rows] == [
        (case, method, region)
        for case in ids
        for method, regions in (("model", REGIONS), ("baseline", ("wt",)))
        for region in regions
    ]
    for method in ("model", "baseline"):  # the cases differ: mean and median say something
        assert len({r["dice"] for r in rows if r["method"] == method and r["region"] == "wt"}) == 3
    # the CSV holds what tumorseg.evaluate gives for the segmentations written
    for folder, method in ((out, "model"), (out / "baseline", "baseline")):
        expected = evaluated(folder, root, tmp_path / method)
        for row in rows:
            if row["method"] == method:
                for metric in ("dice", "hd95", "pred_volume_cm3", "ref_volume_cm3"):
                    assert float(row[metric]) == pytest.approx(expected[row["case_id"]][row["region"]][metric])
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [f"{case}.png" for case in ids]

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["cases"] == ids and saved["failed"] == {} and saved["lesionwise"]["task"] == "GLI"
    volume_part, lesion_part = printed.split("lesion-wise")
    tables = {"volume": table_rows(volume_part, 2), "lesionwise": table_rows(lesion_part, 2)}
    names = {"model": str(ckpt), "baseline": real_exam.BASELINE}
    columns = {"volume": ("dice", "hd95"), "lesionwise": ("lesion_dice", "lesion_hd95")}
    for mode, metrics in columns.items():
        summary = saved["summary"] if mode == "volume" else saved["lesionwise"]["summary"]
        for method, regions in (("model", REGIONS), ("baseline", ("wt",))):
            for statistic, function in (("mean", np.mean), ("median", np.median)):
                cells = tables[mode][(names[method], statistic)]
                for index, (metric, region) in enumerate((m, r) for m in metrics for r in REGIONS):
                    if region not in regions:
                        assert cells[index] == "-"
                        continue
                    values = [float(r[metric]) for r in rows if r["method"] == method and r["region"] == region]
                    assert summary[method][region][metric][statistic] == pytest.approx(function(values))
                    assert cells[index] == real_exam.format_value(metric, function(values))
    summary_md = (out / "summary.md").read_text()
    assert "## Over 3 case(s)" in summary_md and "## BraTS GLI lesion-wise, over 3 case(s)" in summary_md

    # --cases: a run's split.json picks its validation cases; a case that cannot be read fails alone
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [ids[1]], "val": [ids[2], ids[0]]}))
    out = tmp_path / "some"
    assert real_exam.main(["--baseline-only", "--case", str(root), "--cases", str(split), "--out", str(out)]) == 0
    assert [r["case_id"] for r in read_csv(out / "cases.csv")] == [ids[2], ids[0]]
    assert not any(out.glob("*.nii.gz")) and len(list((out / "baseline").glob("*.nii.gz"))) == 2
    flair = root / ids[0] / f"{ids[0]}_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:200])
    capsys.readouterr()
    assert real_exam.main(["--baseline-only", "--case", str(root), "--out", str(out)]) == 1
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["cases"] == ids[1:] and list(saved["failed"]) == [ids[0]]
    assert ids[0] in capsys.readouterr().err
    assert real_exam.main(["--baseline-only", "--case", str(root), "--cases", "Brats18_nowhere_1"]) == 2
    assert "1 case(s) are not in --case" in capsys.readouterr().err


BRATS18 = SHARED_DATA / "brats18"


@pytest.mark.skipif(not BRATS18.is_dir(), reason=f"no BraTS 2018 exams in {SHARED_DATA}")
def test_the_baseline_alone_on_two_real_brats_2018_exams(real_exam, tmp_path, capsys):
    """--baseline-only on a folder in the BraTS 2018 naming, two cases picked by --cases."""
    ids = ["Brats18_CBICA_ABM_1", "Brats18_TCIA02_135_1"]
    out = tmp_path / "out"
    assert real_exam.main(["--baseline-only", "--case", str(BRATS18), "--cases", *ids, "--out", str(out)]) == 0
    rows = read_csv(out / "cases.csv")
    assert [(r["case_id"], r["method"], r["region"]) for r in rows] == [(i, "baseline", "wt") for i in ids]
    dice = [float(r["dice"]) for r in rows]
    assert dice == pytest.approx([0.8692, 0.9023], abs=1e-4)
    mean = table_rows(capsys.readouterr().out, 2)[(real_exam.BASELINE, "mean")]
    assert mean[0] == real_exam.format_value("dice", np.mean(dice)) and mean[1:3] == ["-", "-"]
    assert [nib.load(out / "baseline" / f"{i}.nii.gz").shape for i in ids] == [REAL_SHAPE] * 2

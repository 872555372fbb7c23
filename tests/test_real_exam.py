"""experiments/real_exam.py: its table and metrics.json hold what tumorseg.evaluate gives for the
segmentation it writes, on a tiny phantom and on the real labelled exam of ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest
import torch
from brats_fixtures import EXAM_2020, REAL_SHAPE, SHARED_DATA
from test_predict import save_checkpoint, stand_in
from test_pretrained import NAME, NOTICE, write_registry
from train_helpers import experiment_script

from tumorseg.data.synthetic import generate_dataset
from tumorseg.evaluate import evaluate_folder
from tumorseg.labels import REGION_NAMES, REGIONS
from tumorseg.predict.pretrained import REGISTRY_ENV
from tumorseg.training.module import SegmentationModule


@pytest.fixture(scope="module")
def real_exam():
    yield from experiment_script("real_exam")


def table_rows(printed: str) -> dict[str, list[str]]:
    """The cells of the printed Markdown table, by region."""
    names = {f"| {REGION_NAMES[r]} |": r for r in REGIONS}
    rows = {}
    for line in printed.splitlines():
        for start, region in names.items():
            if line.startswith(start):
                rows[region] = [cell.strip() for cell in line.strip("|").split("|")[1:]]
    return rows


def check_against_evaluate(real_exam, out: Path, case: Path, printed: str, tmp_path: Path) -> dict:
    """metrics.json and the table equal tumorseg.evaluate's metrics of the segmentation written in ``out``."""
    saved = json.loads((out / "metrics.json").read_text())
    result = evaluate_folder(out, case, out=tmp_path / "evaluated" / "metrics.csv", progress=False)
    assert not result.missing and not result.errors
    expected = {row["region"]: row for row in result.rows if row["case_id"] == saved["case_id"]}
    assert set(expected) == set(REGIONS) == set(saved["regions"])
    table = table_rows(printed)
    for region in REGIONS:
        for column, metric in enumerate(real_exam.COLUMNS):
            assert saved["regions"][region][metric] == expected[region][metric], (region, metric)
            assert table[region][column] == real_exam.format_value(metric, expected[region][metric])
    assert (out / "overlay.png").stat().st_size > 5_000
    return saved


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
    assert set(saved["timings_s"]) == {"load_models", "read_preprocess", "inference", "score", "total"}

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

"""The dataset check: every problem named with its case and file, all at once, the CLI's exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from brats_fixtures import (
    affine,
    case_id,
    file_states,
    write_case,
    write_dataset,
    write_msd_index,
    write_nifti,
)

from tumorseg.data.check import check_dataset, format_problems
from tumorseg.data.layouts import DatasetError, discover
from tumorseg.data.reading import check_case, load_case

SRC = Path(__file__).parents[1] / "src"
ID = "BraTS20_Training_001"

# write_case options that break a brats2020 case -> the end of its one problem, after "case <id>: <folder>/"
CONTENT_PROBLEMS = [
    ({"corrupt": "t1ce"}, f"{ID}_t1ce.nii.gz: cannot read the file"),
    ({"corrupt": "label", "ext": ".nii"}, f"{ID}_seg.nii: cannot read the file"),
    ({"wrong_shape": "t1"}, f"{ID}_t1.nii.gz: shape (13, 10, 8) differs from (12, 10, 8) of {ID}_flair.nii.gz"),
    ({"wrong_shape": "label"}, f"{ID}_seg.nii.gz: shape (13, 10, 8) differs"),
    ({"moved": "t2"}, f"{ID}_t2.nii.gz: affine differs from {ID}_flair.nii.gz's by up to 5 mm"),
    ({"nan_in": "t1"}, f"{ID}_t1.nii.gz: 1 non-finite (NaN or inf) voxels in the t1 image"),
    ({"zero_in": "t1ce"}, f"{ID}_t1ce.nii.gz: the t1ce image is all zeros"),
    ({"bad_label": 3}, f"{ID}_seg.nii.gz: label values [3] are not part of the brats2020 convention"),
]


@pytest.mark.parametrize(("kw", "expected"), CONTENT_PROBLEMS)
def test_each_content_problem_names_the_case_and_the_file(tmp_path, kw, expected):
    write_case(tmp_path, "brats2020", ID, **kw)
    report = check_dataset(tmp_path, progress=False)
    (line,) = [str(problem) for problem in report.problems]
    assert line.startswith(f"case {ID}: {tmp_path / ID / expected.split(':')[0]}: ")
    assert expected in line


def test_check_case_returns_the_volume_with_its_non_fatal_problems(tmp_path):
    write_case(tmp_path, "brats2020", ID, nan_in="t2", zero_in="t1")
    case = discover(tmp_path).cases[0]
    volume, problems = check_case(case)
    assert volume is not None and np.isnan(volume.image[3]).sum() == 1
    assert [problem.path.name for problem in problems] == [f"{ID}_t1.nii.gz", f"{ID}_t2.nii.gz"]
    assert load_case(case).image.shape == volume.image.shape
    write_case(tmp_path, "brats2020", ID, nan_in="t2", bad_label=7)
    volume, problems = check_case(case)
    assert volume is None
    assert ["non-finite" in str(problems[0]), "label values [7]" in str(problems[1])] == [True, True]


def test_msd_channels_are_named_in_content_problems(tmp_path):
    write_dataset(tmp_path, "msd", 1, zero_in="t1ce")
    (line,) = map(str, check_dataset(tmp_path, progress=False).problems)
    assert line == (
        f"case BRATS_001: {tmp_path / 'imagesTr' / 'BRATS_001.nii.gz'}: "
        "channel 2 (t1ce) of the 4D image is all zeros; the modality is empty: re-export or re-download it"
    )


def write_broken_dataset(root: Path) -> dict[str, list[str]]:
    """Six broken brats2021 cases and two whole ones; returns case id -> what its problems say."""
    write_dataset(root, "brats2021", 2, start=1)
    ids = [case_id("brats2021", index) for index in range(3, 9)]
    write_case(root, "brats2021", ids[0], missing=("t1ce",))
    write_case(root, "brats2021", ids[1], label=False)
    write_case(root / "copy", "brats2021", ids[2])
    write_case(root, "brats2021", ids[2])
    folder = write_case(root, "brats2021", ids[3])
    write_case(root, "brats2021", ids[3], ext=".nii", missing=("t1", "t1ce", "t2", "label"))
    write_case(root, "brats2021", ids[4], corrupt="flair", wrong_shape="t2", nan_in="t1")
    write_case(root, "brats2021", ids[5], moved="t1ce", bad_label=5)
    (folder / "name_mapping.csv").write_text("BraTS_2021_subject_ID\n")
    return {
        ids[0]: [f"{root / ids[0]}: the t1ce image is missing: expected {ids[0]}_t1ce.nii.gz"],
        ids[1]: [f"{root / ids[1]}: no label file: expected {ids[1]}_seg.nii.gz"],
        ids[2]: [f"the case id is found in 2 places ({root / ids[2]}, {root / 'copy' / ids[2]}); keep one"],
        ids[3]: [f"2 candidate files for the flair ({ids[3]}_flair.nii, {ids[3]}_flair.nii.gz); keep one"],
        ids[4]: [
            f"{ids[4]}_flair.nii.gz: cannot read the file",
            f"{ids[4]}_t1.nii.gz: 1 non-finite (NaN or inf) voxels in the t1 image",
            f"{ids[4]}_t2.nii.gz: shape (13, 10, 8) differs from (12, 10, 8) of {ids[4]}_t1.nii.gz",
        ],
        ids[5]: [
            f"{ids[5]}_t1ce.nii.gz: affine differs from {ids[5]}_flair.nii.gz's by up to 5 mm",
            f"{ids[5]}_seg.nii.gz: label values [5] are not part of the brats2021 convention",
        ],
    }


def test_every_problem_of_every_case_is_reported_at_once(tmp_path):
    expected = write_broken_dataset(tmp_path)
    report = check_dataset(tmp_path, progress=False)
    assert not report.ok
    assert [case.case_id for case in report.cases] == [case_id("brats2021", i) for i in (1, 2, 7, 8)]
    for case, messages in expected.items():
        lines = [str(problem) for problem in report.problems if problem.case_id == case]
        assert len(lines) == len(messages), lines
        for line, message in zip(lines, messages):
            assert line.startswith(f"case {case}: ") and message in line
    assert len(report.problems) == sum(map(len, expected.values()))
    assert format_problems(report.problems).splitlines() == [f"- {problem}" for problem in report.problems]
    assert report.shapes == {(12, 10, 8): 2}
    assert report.label_values == [0, 1, 2, 4]


def test_without_labels_required_unlabelled_cases_are_fine(tmp_path):
    write_dataset(tmp_path, "brats2023", 2, label=False)
    assert not check_dataset(tmp_path, progress=False).ok
    report = check_dataset(tmp_path, require_labels=False, progress=False)
    assert report.ok and report.label_values == []


def test_report_summarises_shapes_spacings_and_source_label_values(tmp_path):
    write_dataset(tmp_path, "msd", 2)
    write_case(tmp_path, "msd", "BRATS_003", shape=(10, 10, 8), spacing=(1.0, 1.0, 2.0))
    write_msd_index(tmp_path, ["BRATS_001", "BRATS_002", "BRATS_003"])
    report = check_dataset(tmp_path, progress=False)
    assert report.ok and report.layout == "msd" and len(report.cases) == 3
    assert report.shapes == {(12, 10, 8): 2, (10, 10, 8): 1}
    assert report.spacings == {(1.0, 1.0, 1.0): 2, (1.0, 1.0, 2.0): 1}
    assert report.label_values == [0, 1, 2, 3]


def test_mixed_layouts_are_reported_per_case(tmp_path):
    write_dataset(tmp_path, "brats2023", 2)
    folder = write_case(tmp_path, "brats2020", ID)
    (line,) = map(str, check_dataset(tmp_path, progress=False).problems)
    assert line.startswith(f"case {ID}: {folder}: files named like the brats2020 layout in a brats2023 dataset")


def test_msd_dataset_json_mismatches(tmp_path):
    write_dataset(tmp_path, "msd", 3, resource_forks=True)
    write_msd_index(tmp_path, ["BRATS_001", "BRATS_002", "BRATS_009"], modality=("T1w", "FLAIR", "t1gd", "T2w"))
    (tmp_path / "labelsTr" / "BRATS_002.nii.gz").unlink()
    lines = [str(problem) for problem in check_dataset(tmp_path, progress=False).problems]
    assert lines == [
        f"{tmp_path / 'dataset.json'}: the channels are ('t1w', 'flair', 't1gd', 't2w'), but tumorseg reads MSD "
        "images as ('flair', 't1w', 't1gd', 't2w') (flair, t1, t1ce, t2); reorder the channels of the images "
        "to that order",
        f"case BRATS_003: {tmp_path / 'imagesTr' / 'BRATS_003.nii.gz'}: on disk but not listed in dataset.json; "
        "add it to the 'training' or 'test' list, or delete it",
        f"case BRATS_003: {tmp_path / 'labelsTr' / 'BRATS_003.nii.gz'}: on disk but not listed in dataset.json; "
        "add it to the 'training' or 'test' list, or delete it",
        f"case BRATS_002: {tmp_path / 'labelsTr' / 'BRATS_002.nii.gz'}: listed in dataset.json but missing on "
        "disk; restore the file or remove the case from the list",
        f"case BRATS_009: {tmp_path / 'imagesTr' / 'BRATS_009.nii.gz'}: listed in dataset.json but missing on "
        "disk; restore the file or remove the case from the list",
        f"case BRATS_009: {tmp_path / 'labelsTr' / 'BRATS_009.nii.gz'}: listed in dataset.json but missing on "
        "disk; restore the file or remove the case from the list",
    ]


def test_an_unreadable_dataset_json_is_a_problem_and_the_files_are_paired_by_name(tmp_path):
    write_dataset(tmp_path, "msd", 2)
    (tmp_path / "dataset.json").write_text("{not json")
    report = check_dataset(tmp_path, progress=False)
    assert len(report.cases) == 2
    (line,) = map(str, report.problems)
    assert line.startswith(f"{tmp_path / 'dataset.json'}: cannot read the case lists")


def test_an_msd_label_without_its_image(tmp_path):
    write_dataset(tmp_path, "msd", 2, missing=("image",))
    (tmp_path / "dataset.json").unlink()
    write_case(tmp_path, "msd", "BRATS_003")
    (line, _) = map(str, check_dataset(tmp_path, progress=False).problems)
    assert line == (
        f"case BRATS_001: {tmp_path}: the 4D image is missing: expected imagesTr/BRATS_001.nii.gz; "
        "add it or remove the case"
    )


def test_an_unusable_root_raises_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        check_dataset(tmp_path / "nowhere", progress=False)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "tumorseg.data", "check", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_cli_exit_codes_and_files_left_untouched(tmp_path):
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    write_dataset(clean, "brats2020", 3, ext=".nii")
    expected = write_broken_dataset(broken)
    before = file_states(tmp_path)

    result = run_cli(str(clean), "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "brats2020 (detected)" in result.stdout and "3 (3 with a label, 0 without)" in result.stdout
    assert "0, 1, 2, 4 (brats2020 convention)" in result.stdout and "No problems found." in result.stdout

    result = run_cli(str(broken), "--workers", "1", "--layout", "brats2021")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{sum(map(len, expected.values()))} problem(s):" in result.stdout
    for case, messages in expected.items():
        for message in messages:
            assert message in result.stdout
            assert any(line.startswith(f"- case {case}: ") and message in line for line in result.stdout.splitlines())

    result = run_cli(str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{tmp_path / 'nowhere'} does not exist" in result.stderr and "BraTS2021_00000_flair.nii.gz" in result.stderr

    assert file_states(tmp_path) == before


def test_cli_no_labels_and_argument_errors(tmp_path):
    write_case(tmp_path, "brats2023", "BraTS-GLI-00001-000", label=False)
    result = run_cli(str(tmp_path))
    assert result.returncode == 1 and "no label file: expected BraTS-GLI-00001-000-seg.nii.gz" in result.stdout
    result = run_cli(str(tmp_path), "--no-labels", "--workers", "1")
    assert result.returncode == 0 and "1 (0 with a label, 1 without)" in result.stdout
    result = run_cli(str(tmp_path), "--workers", "0")
    assert result.returncode == 2 and "argument --workers: must be at least 1" in result.stderr
    result = run_cli(str(tmp_path), "--layout", "brats2019")
    assert result.returncode == 2 and "argument --layout: invalid choice: 'brats2019'" in result.stderr


def test_check_dataset_in_parallel_matches_serial(tmp_path):
    write_broken_dataset(tmp_path)
    write_nifti(tmp_path / "unrelated.nii.gz", np.zeros((2, 2, 2), np.int16), affine())
    before = file_states(tmp_path)
    serial = check_dataset(tmp_path, progress=False)
    parallel = check_dataset(tmp_path, workers=2, progress=True)
    assert parallel == serial
    assert file_states(tmp_path) == before

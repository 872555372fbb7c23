"""Discovering and reading BraTS 2017-2019/2020/2021/2023 and MSD cases: naming, nesting, label conventions, the real exam."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from brats_fixtures import (
    KAGGLE_355_LABEL,
    SHAPE,
    SHARED_DATA,
    SharedData,
    affine,
    case_id,
    file_name,
    image_data,
    internal_label,
    shared_data,
    write_case,
    write_dataset,
    write_msd_index,
    write_nifti,
)

from tumorseg.data.layouts import (
    LAYOUTS,
    Case,
    CaseError,
    DatasetError,
    Problem,
    discover,
)
from tumorseg.data.reading import check_case, load_case
from tumorseg.labels import MODALITIES


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_is_discovered_with_its_ids_modality_order_and_labels(tmp_path, layout):
    ids = write_dataset(tmp_path, layout, 3)
    discovery = discover(tmp_path)
    assert discovery.layout == layout
    assert discovery.problems == []
    assert [case.case_id for case in discovery.cases] == sorted(ids)
    case = discovery.cases[0]
    assert case.layout == layout
    if layout == "msd":
        assert case.images == (tmp_path / "imagesTr" / f"{case.case_id}.nii.gz",)
        assert case.label == tmp_path / "labelsTr" / f"{case.case_id}.nii.gz"
    else:
        folder = tmp_path / case.case_id
        assert case.images == tuple(folder / file_name(layout, case.case_id, m) for m in MODALITIES)
        assert case.label == folder / file_name(layout, case.case_id, "label")
    assert case.files == (*case.images, case.label)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_case_stacks_modalities_in_order_and_maps_labels_to_internal_classes(tmp_path, layout):
    write_case(tmp_path, layout, case_id(layout, 7), seed=7, spacing=(1.2, 1.0, 2.5))
    volume = load_case(discover(tmp_path).cases[0])
    assert volume.image.shape == (4, *SHAPE) and volume.image.dtype == np.float32
    for index, modality in enumerate(MODALITIES):
        np.testing.assert_array_equal(volume.image[index], image_data(SHAPE, modality, seed=7))
    assert volume.label.dtype == np.uint8
    np.testing.assert_array_equal(volume.label, internal_label(SHAPE))
    np.testing.assert_allclose(volume.affine, affine((1.2, 1.0, 2.5)))
    assert volume.affine.dtype == np.float64
    assert volume.spacing == pytest.approx((1.2, 1.0, 2.5))


@pytest.mark.parametrize(
    ("layout", "source", "internal"),
    [
        ("brats2018", 4, 3),  # enhancing tumour
        ("brats2020", 4, 3),
        ("brats2021", 4, 3),
        ("brats2023", 3, 3),
        ("brats2023", 1, 1),
        ("msd", 1, 2),  # edema
        ("msd", 2, 1),  # non-enhancing tumour
    ],
)
def test_label_values_of_each_convention_become_internal_classes(tmp_path, layout, source, internal):
    write_case(tmp_path, layout, case_id(layout, 1))
    case = discover(tmp_path).cases[0]
    stored = np.asanyarray(nib.load(case.label).dataobj)
    assert (stored == source).any()
    assert set(np.unique(load_case(case).label[stored == source])) == {internal}


def test_case_folders_one_level_deeper_are_found_but_not_deeper(tmp_path):
    write_dataset(tmp_path / "MICCAI_BraTS2020_TrainingData", "brats2020", 2)
    assert len(discover(tmp_path).cases) == 2
    write_dataset(tmp_path / "a" / "b" / "c", "brats2021", 1)
    with pytest.raises(DatasetError, match="2 folder levels"):
        discover(tmp_path / "a")


def test_msd_root_one_level_deeper_is_found(tmp_path):
    write_dataset(tmp_path / "Task01_BrainTumour", "msd", 2, test_cases=1)
    discovery = discover(tmp_path, layout="msd")
    assert [(case.case_id, case.label is None) for case in discovery.cases] == [
        ("BRATS_001", False),
        ("BRATS_002", False),
        ("BRATS_003", True),
    ]


def test_msd_test_set_is_left_out_when_labels_are_required(tmp_path):
    write_dataset(tmp_path, "msd", 2, test_cases=1)
    discovery = discover(tmp_path, require_labels=True)
    assert [case.case_id for case in discovery.cases] == ["BRATS_001", "BRATS_002"]
    assert discovery.problems == []


def test_a_single_case_folder_is_a_root_of_one_case(tmp_path):
    write_dataset(tmp_path, "brats2023", 2)
    discovery = discover(tmp_path / case_id("brats2023", 2))
    assert discovery.layout == "brats2023"
    assert [case.case_id for case in discovery.cases] == [case_id("brats2023", 2)]


def test_nii_files_and_the_kaggle_label_name_of_case_355(tmp_path):
    write_case(tmp_path, "brats2020", "BraTS20_Training_355", ext=".nii", label_name=KAGGLE_355_LABEL)
    write_case(tmp_path, "brats2020", "BraTS20_Training_356", ext=".nii")
    discovery = discover(tmp_path, require_labels=True)
    assert discovery.problems == []
    case_355 = discovery.cases[0]
    assert case_355.label == tmp_path / "BraTS20_Training_355" / KAGGLE_355_LABEL
    assert case_355.images[0].name == "BraTS20_Training_355_flair.nii"
    np.testing.assert_array_equal(load_case(case_355).label, internal_label(SHAPE))


def test_the_kaggle_label_name_counts_for_case_355_only(tmp_path):
    folder = write_case(tmp_path, "brats2020", "BraTS20_Training_001", label=False)
    write_nifti(folder / KAGGLE_355_LABEL, internal_label(SHAPE), affine())
    assert discover(tmp_path).cases[0].label is None


@pytest.mark.parametrize("layout", ["brats2020", "msd"])
def test_macos_resource_forks_and_unknown_files_are_ignored(tmp_path, layout):
    write_dataset(tmp_path, layout, 2, resource_forks=True)
    (tmp_path / "name_mapping.csv").write_text("BraTS_2020_subject_ID\n")
    (tmp_path / "survival_info.csv").write_text("Brats20ID,Age\n")
    assert any(path.name.startswith("._") for path in tmp_path.rglob("*"))
    discovery = discover(tmp_path, require_labels=True)
    assert discovery.problems == []
    assert len(discovery.cases) == 2
    assert not any(path.name.startswith("._") for case in discovery.cases for path in case.files)


def test_msd_cases_are_paired_by_name_without_dataset_json(tmp_path):
    write_dataset(tmp_path, "msd", 2, test_cases=1)
    (tmp_path / "dataset.json").unlink()
    discovery = discover(tmp_path)
    assert [case.label is not None for case in discovery.cases] == [True, True, False]


def test_msd_dataset_json_lists_are_followed(tmp_path):
    write_dataset(tmp_path, "msd", 2)
    write_msd_index(tmp_path, training=["BRATS_002"])
    discovery = discover(tmp_path)
    assert [case.case_id for case in discovery.cases] == ["BRATS_002"]
    assert any("not listed in dataset.json" in str(problem) for problem in discovery.problems)


def test_validation_cases_have_no_label(tmp_path):
    write_case(tmp_path, "brats2020", case_id("brats2020", 1, split="Validation"), label=False)
    case = discover(tmp_path).cases[0]
    assert case.case_id == "BraTS20_Validation_001"
    assert case.label is None and case.files == case.images
    volume = load_case(case)
    assert volume.label is None and volume.image.shape == (4, *SHAPE)


def test_other_brats2023_sub_challenges_share_the_naming(tmp_path):
    write_case(tmp_path, "brats2023", "BraTS-MEN-00004-000")
    write_case(tmp_path, "brats2023", "BraTS-PED-00012-001")
    discovery = discover(tmp_path)
    assert [case.case_id for case in discovery.cases] == ["BraTS-MEN-00004-000", "BraTS-PED-00012-001"]


def test_forced_layout(tmp_path):
    write_dataset(tmp_path, "brats2020", 1)
    assert discover(tmp_path, layout="brats2020").layout == "brats2020"
    with pytest.raises(DatasetError, match="no case of the brats2021 layout.*found brats2020"):
        discover(tmp_path, layout="brats2021")
    with pytest.raises(ValueError, match="Unknown layout 'brats2019'"):
        discover(tmp_path, layout="brats2019")


def test_the_majority_layout_wins_and_the_other_files_are_problems(tmp_path):
    write_dataset(tmp_path, "brats2020", 2)
    write_case(tmp_path, "brats2021", "BraTS2021_00001")
    discovery = discover(tmp_path)
    assert discovery.layout == "brats2020" and len(discovery.cases) == 2
    assert [problem.case_id for problem in discovery.problems] == ["BraTS2021_00001"]
    write_case(tmp_path, "brats2021", "BraTS2021_00002")
    with pytest.raises(DatasetError, match="--layout"):
        discover(tmp_path)


@pytest.mark.parametrize("name", ["missing", "empty", "file", "unknown"])
def test_an_unusable_root_names_itself_and_the_known_layouts(tmp_path, name):
    root = tmp_path / name
    if name == "empty":
        root.mkdir()
    elif name == "file":
        root.write_text("not a folder")
    elif name == "unknown":
        write_nifti(root / "patient1" / "flair.nii.gz", np.zeros(SHAPE, np.int16), affine())
    with pytest.raises(DatasetError, match=re.escape(str(root))) as error:
        discover(root)
    message = str(error.value)
    assert str(root) in message
    for layout, example in [
        ("brats2018", "Brats18_CBICA_AAB_1_flair.nii.gz"),
        ("brats2020", "BraTS20_Training_001_flair.nii.gz"),
        ("brats2021", "BraTS2021_00000_flair.nii.gz"),
        ("brats2023", "BraTS-GLI-00000-000-t2f.nii.gz"),
        ("msd", "imagesTr/BRATS_001.nii.gz"),
    ]:
        assert layout in message and example in message


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"corrupt": "t1"}, "_t1.nii.gz: cannot read the file"),
        ({"wrong_shape": "t2"}, "_t2.nii.gz: shape (13, 10, 8) differs from (12, 10, 8)"),
        ({"moved": "label"}, "_seg.nii.gz: affine differs from BraTS2021_00001_flair.nii.gz's by up to 5 mm"),
        ({"bad_label": 3}, "_seg.nii.gz: label values [3] are not part of the brats2021 convention"),
    ],
)
def test_load_case_errors_name_the_case_and_the_file(tmp_path, kw, expected):
    write_case(tmp_path, "brats2021", "BraTS2021_00001", **kw)
    with pytest.raises(CaseError, match=re.escape(expected)) as error:
        load_case(discover(tmp_path).cases[0])
    assert str(error.value).startswith(f"case BraTS2021_00001: {tmp_path / 'BraTS2021_00001'}")
    assert expected in str(error.value)


def test_load_case_rejects_images_of_the_wrong_dimensionality(tmp_path):
    folder = write_case(tmp_path, "brats2023", "BraTS-GLI-00001-000")
    write_nifti(folder / "BraTS-GLI-00001-000-t1c.nii.gz", np.ones((*SHAPE, 2), np.int16), affine())
    write_case(tmp_path / "msd", "msd", "BRATS_001")
    write_nifti(tmp_path / "msd" / "imagesTr" / "BRATS_001.nii.gz", np.ones(SHAPE, np.float32), affine())
    with pytest.raises(CaseError, match=r"t1c.nii.gz: expected a 3D image, found shape \(12, 10, 8, 2\)"):
        load_case(discover(tmp_path, layout="brats2023").cases[0])
    with pytest.raises(CaseError, match=r"BRATS_001.nii.gz: expected a 4D image of shape \(X, Y, Z, 4\)"):
        load_case(discover(tmp_path / "msd").cases[0])


def test_labels_stored_as_floats_are_rounded_but_fractions_are_refused(tmp_path):
    folder = write_case(tmp_path, "brats2020", "BraTS20_Training_001")
    label_path = folder / "BraTS20_Training_001_seg.nii.gz"
    stored = np.asanyarray(nib.load(label_path).dataobj).astype(np.float32)
    write_nifti(label_path, stored + 1e-5, affine())
    case = discover(tmp_path).cases[0]
    np.testing.assert_array_equal(load_case(case).label, internal_label(SHAPE))
    stored[0, 0, 0] = 0.5
    write_nifti(label_path, stored, affine())
    with pytest.raises(CaseError, match="fractional values"):
        load_case(case)


def test_problem_names_the_case_and_the_file():
    path = Path("data/BraTS20_Training_001/BraTS20_Training_001_t1.nii")
    assert str(Problem("msg", "BraTS20_Training_001", path)) == f"case BraTS20_Training_001: {path}: msg"
    assert str(Problem("msg", path=path)) == f"{path}: msg"
    assert str(Problem("msg", "BraTS20_Training_001")) == "case BraTS20_Training_001: msg"


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> SharedData:
    return shared_data(tmp_path_factory.mktemp("shared"))


def test_the_shared_brats2023_exam_keeps_its_orientation_and_modality_order(shared):
    exam = shared.exam_2023
    for root in (shared.root, exam):
        # the shared folder also holds a BraTS 2020 exam, so the 2023 layout is named there
        discovery = discover(root, layout="brats2023") if root == shared.root else discover(root)
        assert discovery.layout == "brats2023"
        assert [case.case_id for case in discovery.cases] == ["BraTS-GLI-00001-000"]
        # the other real exams beside it: BraTS 2020 (real2020/) and, where present, BraTS 2018 (brats18/)
        assert all(re.search(r"brats20(18|20) layout", p.message) for p in discovery.problems)
    case = discovery.cases[0]
    assert case.label is None
    assert [path.name.split("-")[-1] for path in case.images] == [
        "t2f.nii.gz",
        "t1n.nii.gz",
        "t1c.nii.gz",
        "t2w.nii.gz",
    ]
    volume, problems = check_case(case)
    assert problems == []
    assert volume.image.shape == (4, *shared.shape) and volume.image.dtype == np.float32
    assert volume.label is None
    flair = nib.load(exam / "BraTS-GLI-00001-000-t2f.nii.gz")
    assert flair.get_data_dtype() == np.int16
    np.testing.assert_array_equal(volume.affine, flair.affine)
    assert nib.aff2axcodes(volume.affine) == ("L", "P", "S")
    assert volume.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(volume.image[0], np.asanyarray(flair.dataobj))


def test_case_is_a_frozen_value():
    case = Case("BRATS_001", "msd", (Path("imagesTr/BRATS_001.nii.gz"),), None)
    assert case == Case("BRATS_001", "msd", (Path("imagesTr/BRATS_001.nii.gz"),), None)
    with pytest.raises(AttributeError, match="label"):
        case.label = Path("labelsTr/BRATS_001.nii.gz")


@pytest.mark.parametrize(
    "case",
    ["Brats17_2013_10_1", "Brats17_TCIA_105_1", "Brats18_CBICA_AAB_1", "Brats18_TCIA01_131_1", "BraTS19_TMC_06290_1",
     "BraTS19_CBICA_AAM_1", "BraTS19_2013_0_1"],
)  # fmt: skip
def test_brats_2017_2018_2019_case_names(tmp_path, case):
    write_case(tmp_path, "brats2018", case)
    discovery = discover(tmp_path)
    assert discovery.layout == "brats2018" and discovery.problems == []
    (found,) = discovery.cases
    assert found.case_id == case and found.grade is None
    # "_t1" and "_t1ce" both end a case id's files: each modality gets its own
    assert [path.name for path in found.images] == [f"{case}_{m}.nii.gz" for m in MODALITIES]
    assert found.label.name == f"{case}_seg.nii.gz"
    np.testing.assert_array_equal(load_case(found).label, internal_label(SHAPE))


def test_brats2018_grades_from_the_hgg_and_lgg_folders(tmp_path):
    root = tmp_path / "MICCAI_BraTS_2018_Data_Training"
    write_case(root / "HGG", "brats2018", "Brats18_CBICA_AAB_1")
    write_case(root / "HGG", "brats2018", "Brats18_2013_2_1")
    write_case(root / "LGG", "brats2018", "Brats18_TCIA10_103_1")
    for where in (root, tmp_path):  # the dataset's folder, or the folder above it
        discovery = discover(where)
        assert discovery.problems == []
        assert {case.case_id: case.grade for case in discovery.cases} == {
            "Brats18_2013_2_1": "HGG",
            "Brats18_CBICA_AAB_1": "HGG",
            "Brats18_TCIA10_103_1": "LGG",
        }
    # one grade folder given as the root
    assert [case.grade for case in discover(root / "LGG").cases] == ["LGG"]


def test_grades_from_name_mapping_csv(tmp_path):
    ids = write_dataset(tmp_path, "brats2020", 3)
    (tmp_path / "name_mapping.csv").write_text(
        "Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,BraTS_2019_subject_ID,BraTS_2020_subject_ID\n"
        f"HGG,Brats17_CBICA_AAB_1,Brats18_CBICA_AAB_1,NA,BraTS19_CBICA_AAB_1,{ids[0]}\n"
        f"LGG,Brats17_2013_0_1,Brats18_2013_0_1,NA,BraTS19_2013_0_1,{ids[2]}\n"
    )
    discovery = discover(tmp_path)
    assert discovery.problems == []
    assert [case.grade for case in discovery.cases] == ["HGG", None, "LGG"]
    (tmp_path / "name_mapping.csv").write_bytes(b"\xff\xfe\x00broken")
    discovery = discover(tmp_path)
    assert [case.grade for case in discovery.cases] == [None, None, None]
    (problem,) = discovery.problems
    assert problem.path == tmp_path / "name_mapping.csv" and "cannot read the grades" in problem.message


BRATS18 = SHARED_DATA / "brats18"


@pytest.mark.skipif(not BRATS18.is_dir(), reason=f"no real BraTS 2018 exams in {BRATS18}")
def test_the_shared_brats2018_exams():
    discovery = discover(BRATS18)
    assert discovery.layout == "brats2018" and discovery.problems == []
    assert len(discovery.cases) == 18
    case = next(c for c in discovery.cases if c.case_id == "Brats18_TCIA01_378_1")
    assert [path.name for path in case.images] == [f"Brats18_TCIA01_378_1_{m}.nii.gz" for m in MODALITIES]
    volume = load_case(case)
    stored = np.asanyarray(nib.load(case.label).dataobj)
    assert sorted(np.unique(stored)) == [0, 1, 2, 4]
    for value, internal in ((1, 1), (2, 2), (4, 3)):
        assert set(np.unique(volume.label[stored == value])) == {internal}
    assert volume.image.shape == (4, 240, 240, 155) and nib.aff2axcodes(volume.affine) == ("L", "P", "S")

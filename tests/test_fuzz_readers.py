"""Reader fuzzing: random bytes, cut files, voxels that are not real numbers, 4D images, NaN and inf,
extreme affines and oversized headers, fed to every reader of NIfTI files.

Each reader must end in an error (or, for the dataset check, a problem) that names the file and
says what is wrong; never in a hang, a MemoryError or a traceback from nibabel or numpy. Oversized
headers are refused before any voxel is read, so these tests also allocate next to nothing.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from brats_fixtures import MODALITIES, affine, case_id, file_name, image_data, label_data, write_case, write_nifti

from tumorseg.data.layouts import CaseError, discover
from tumorseg.data.reading import check_case, load_case
from tumorseg.evaluate import evaluate_folder
from tumorseg.io import MAX_VOXELS, NiftiError, read_label, read_nifti
from tumorseg.predict.cases import InputCase, dataset_cases, read_case

# a reader that hangs fails here instead of holding the suite
pytestmark = pytest.mark.timeout(120)

SRC = Path(__file__).parents[1] / "src"
LAYOUT = "brats2020"
ID = case_id(LAYOUT, 1)
SHAPE = (12, 10, 8)


# ------------------------------------------------------------------------------------------ crafting


def patch_header(path: Path, **fields) -> None:
    """Set header fields of a NIfTI-1 or NIfTI-2 file in place, its voxel bytes left as they are."""
    gzipped = path.name.endswith(".gz")
    raw = gzip.decompress(path.read_bytes()) if gzipped else path.read_bytes()
    klass = nib.Nifti2Header if int.from_bytes(raw[:4], "little") == nib.Nifti2Header.sizeof_hdr else nib.Nifti1Header
    header = klass(binaryblock=raw[: klass.sizeof_hdr], check=False)
    for name, value in fields.items():
        header[name] = value
    raw = header.binaryblock + raw[klass.sizeof_hdr :]
    path.write_bytes(gzip.compress(raw) if gzipped else raw)


def random_bytes(compress: bool = False) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        data = np.random.default_rng(0).bytes(4000)
        path.write_bytes(gzip.compress(data) if compress else data)

    return write


def cut(keep: Callable[[int], int]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        content = path.read_bytes()
        path.write_bytes(content[: keep(len(content))])

    return write


def voxels(data: np.ndarray) -> Callable[[Path], None]:
    """The file rewritten with ``data`` (same affine), e.g. complex or RGB voxels."""

    def write(path: Path) -> None:
        nib.save(nib.Nifti1Image(data, affine()), path)

    return write


def header(**fields) -> Callable[[Path], None]:
    return lambda path: patch_header(path, **fields)


def nifti2_dims(*dims: int) -> Callable[[Path], None]:
    """The file rewritten as NIfTI-2 (whose dims are 64-bit), then its dims set to ``dims``."""

    def write(path: Path) -> None:
        nib.save(nib.Nifti2Image(np.asanyarray(nib.load(path).dataobj), affine()), path)
        patch_header(path, dim=[len(dims), *dims, *[1] * (7 - len(dims))])

    return write


def sform(matrix) -> Callable[[Path], None]:
    """The affine set to ``matrix`` (the sform; the qform switched off)."""
    rows = np.asarray(matrix, dtype=np.float64)[:3]
    return header(qform_code=0, sform_code=1, srow_x=rows[0], srow_y=rows[1], srow_z=rows[2])


def singular() -> np.ndarray:
    matrix = affine()
    matrix[:3, 1] = matrix[:3, 0]  # two axes along one direction: no volume
    return matrix


def shifted(by: float) -> np.ndarray:
    matrix = affine()
    matrix[:3, 3] = by
    return matrix


def with_value(value: float, at: tuple[int, int]) -> np.ndarray:
    matrix = affine()
    matrix[at] = value
    return matrix


UNREADABLE = "cannot read the file"
CANNOT_HOLD = "which cannot hold them"
TOO_LARGE = f"over {MAX_VOXELS:,} voxels"
NO_VOXEL = "which holds no voxel"
NOT_REAL = "not real numbers"
BAD_AFFINE = "the affine holds non-finite or huge values"
NO_GRID = "maps voxels to no valid grid"
RGB = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])

# name -> (file extension, what turns a valid file into the broken one, what the error says)
HEADER_FAULTS = {
    "random bytes": (".nii.gz", random_bytes(), UNREADABLE),
    "random bytes, .nii": (".nii", random_bytes(), UNREADABLE),
    "gzip of random bytes": (".nii.gz", random_bytes(compress=True), UNREADABLE),
    "empty file": (".nii.gz", cut(lambda n: 0), UNREADABLE),
    "gzip cut in the header": (".nii.gz", cut(lambda n: 30), UNREADABLE),
    "gzip cut in the voxels": (".nii.gz", cut(lambda n: n * 9 // 10), UNREADABLE),
    ".nii cut in the voxels": (".nii", cut(lambda n: n - 100), UNREADABLE),
    "complex voxels": (".nii.gz", voxels(np.full(SHAPE, 1 + 2j, np.complex64)), NOT_REAL),
    "RGB voxels": (".nii.gz", voxels(np.zeros(SHAPE, RGB)), NOT_REAL),
    "1-bit voxels": (".nii.gz", header(datatype=1, bitpix=1), UNREADABLE),
    "unknown voxel type": (".nii.gz", header(datatype=9999), UNREADABLE),
    "a zero dim": (".nii.gz", header(dim=[3, 0, 10, 8, 1, 1, 1, 1]), NO_VOXEL),
    "a negative dim": (".nii.gz", header(dim=[3, -12, 10, 8, 1, 1, 1, 1]), NO_VOXEL),
    "dims 32767^3": (".nii.gz", header(dim=[3, 32767, 32767, 32767, 1, 1, 1, 1]), TOO_LARGE),
    "dims 32767^3, .nii": (".nii", header(dim=[3, 32767, 32767, 32767, 1, 1, 1, 1]), TOO_LARGE),
    "dims 10^6^3 (NIfTI-2)": (".nii.gz", nifti2_dims(10**6, 10**6, 10**6), TOO_LARGE),
    "dims 10^6^3 (NIfTI-2), .nii": (".nii", nifti2_dims(10**6, 10**6, 10**6), TOO_LARGE),
    # under the voxel limit, but more than the file can hold (a gzip file expands at most 1032-fold)
    "dims 1000^3": (".nii.gz", header(dim=[3, 1000, 1000, 1000, 1, 1, 1, 1]), CANNOT_HOLD),
    "dims 1000^3, .nii": (".nii", header(dim=[3, 1000, 1000, 1000, 1, 1, 1, 1]), CANNOT_HOLD),
    "vox_offset 10^12": (".nii.gz", header(vox_offset=1e12), CANNOT_HOLD),
    "vox_offset 10^12, .nii": (".nii", header(vox_offset=1e12), CANNOT_HOLD),
    "zero affine": (".nii.gz", sform(np.zeros((4, 4))), NO_GRID),
    "singular affine": (".nii.gz", sform(singular()), NO_GRID),
    "voxels of 10^30 mm": (".nii.gz", sform(np.diag([1e30, 1e30, 1e30, 1.0])), NO_GRID),
    "voxels of 10^-9 mm": (".nii.gz", sform(np.diag([1e-9, 1e-9, 1e-9, 1.0])), NO_GRID),
    "origin 10^30 mm away": (".nii.gz", sform(shifted(1e30)), BAD_AFFINE),
    "NaN in the affine": (".nii.gz", sform(with_value(np.nan, (0, 3))), BAD_AFFINE),
    "inf in the affine": (".nii.gz", sform(with_value(np.inf, (1, 1))), BAD_AFFINE),
    "NaN voxel size": (".nii.gz", header(pixdim=[1, np.nan, 1, 1, 1, 1, 1, 1]), "the voxel sizes (nan, 1.0, 1.0)"),
}
FAULTS = [pytest.param(*fault, id=name) for name, fault in HEADER_FAULTS.items()]


def broken_case(root: Path, case: str, role: str, ext: str, fault: Callable[[Path], None]) -> Path:
    """A whole brats2020 case under ``root`` whose ``role`` file (a modality or "label") is then
    broken by ``fault``; returns that file."""
    write_case(root, LAYOUT, case, shape=SHAPE, ext=ext)
    path = root / case / file_name(LAYOUT, case, role, ext)
    fault(path)
    return path


def case_with_non_finite(root: Path, modality: str, value: float) -> Path:
    """A whole brats2020 case under ``root`` with one ``value`` voxel in ``modality``; returns that file."""
    folder = write_case(root, LAYOUT, ID, shape=SHAPE)
    data = image_data(SHAPE, modality).astype(np.float32)
    data[1, 2, 3] = value
    return write_nifti(folder / file_name(LAYOUT, ID, modality), data, affine())


def assert_names(error: Exception | str, path: Path, expected: str) -> None:
    message = str(error)
    assert str(path) in message and expected in message, message


# ------------------------------------------------------------------------------------------ tumorseg.io


@pytest.mark.parametrize(("ext", "fault", "expected"), FAULTS)
def test_io_readers_name_the_file(tmp_path, ext, fault, expected):
    path = broken_case(tmp_path, ID, "label", ext, fault)
    for reader in (read_nifti, read_label):
        with pytest.raises(NiftiError) as caught:
            reader(path)
        assert caught.value.path == path
        assert str(caught.value).startswith(f"{path}: ") and expected in caught.value.reason


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(tmp_path, value):
    data = image_data(SHAPE, "t1").astype(np.float32)
    data[3, 4, 5] = value
    path = write_nifti(tmp_path / "image.nii.gz", data, affine())
    assert np.count_nonzero(~np.isfinite(read_nifti(path)[1])) == 1  # read as stored by default
    with pytest.raises(NiftiError, match=r"image.nii.gz: 1 non-finite \(NaN or inf\) voxels in the image; replace"):
        read_nifti(path, finite=True)
    label = label_data(LAYOUT, SHAPE).astype(np.float32)
    label[3, 4, 5] = value
    with pytest.raises(NiftiError, match="label.nii.gz: the label map holds non-finite"):
        read_label(write_nifti(tmp_path / "label.nii.gz", label, affine()))


@pytest.mark.parametrize("shape", [(12, 10), (12, 10, 8, 2), (12, 10, 8, 1, 2)])
def test_label_of_the_wrong_dimensionality(tmp_path, shape):
    path = write_nifti(tmp_path / "label.nii.gz", np.zeros(shape, np.uint8), affine())
    with pytest.raises(NiftiError, match=rf"label.nii.gz: expected a 3D label map, found shape \({shape[0]}, "):
        read_label(path)


def test_a_gzip_cut_only_in_its_trailer_still_holds_every_voxel(tmp_path):
    # nibabel stops reading after the last voxel, before the checksum and size that end a gzip file
    data = image_data(SHAPE, "t1")
    path = write_nifti(tmp_path / "image.nii.gz", data, affine())
    cut(lambda n: n - 8)(path)
    np.testing.assert_array_equal(read_nifti(path)[1], data)


def test_a_valid_file_within_the_limits_still_reads(tmp_path):
    # a label of zeros compresses about 1000-fold, just under what deflate allows
    path = write_nifti(tmp_path / "zeros.nii.gz", np.zeros((120, 120, 80), np.uint8), affine((0.5, 0.5, 7.0)))
    image, data = read_label(path)
    assert data.shape == (120, 120, 80) and not data.any()
    assert image.header.get_zooms() == (0.5, 0.5, 7.0)


# ------------------------------------------------------------------------------------ dataset readers


@pytest.mark.parametrize("role", ["t1", "label"])
@pytest.mark.parametrize(("ext", "fault", "expected"), FAULTS)
def test_dataset_readers_name_the_case_and_the_file(tmp_path, ext, fault, expected, role):
    path = broken_case(tmp_path, ID, role, ext, fault)
    (case,) = discover(tmp_path).cases
    with pytest.raises(CaseError) as caught:
        load_case(case)
    assert str(caught.value).startswith(f"case {ID}: {path}: ") and expected in str(caught.value)
    volume, problems = check_case(case)
    assert volume is None and [problem.path for problem in problems] == [path]
    assert expected in problems[0].message


def test_dataset_readers_refuse_4d_images_and_labels(tmp_path):
    folder = write_case(tmp_path, LAYOUT, ID, shape=SHAPE)
    t1 = folder / file_name(LAYOUT, ID, "t1")
    write_nifti(t1, np.stack([image_data(SHAPE, "t1")] * 2, axis=-1), affine())
    seg = folder / file_name(LAYOUT, ID, "label")
    write_nifti(seg, label_data(LAYOUT, SHAPE)[..., None, None].repeat(2, axis=-1), affine())
    (case,) = discover(tmp_path).cases
    with pytest.raises(CaseError) as caught:
        load_case(case)
    assert str(caught.value).splitlines() == [
        f"case {ID}: {t1}: expected a 3D image, found shape (12, 10, 8, 2); BraTS stores one modality per 3D file",
        f"case {ID}: {seg}: expected a 3D label map, found shape (12, 10, 8, 1, 2); use the dataset's label file",
    ]


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_voxels_are_refused_where_asked_and_reported_by_the_check(tmp_path, value):
    t2 = case_with_non_finite(tmp_path, "t2", value)
    (case,) = discover(tmp_path).cases
    assert load_case(case).image.shape == (4, *SHAPE)  # training reads the case; the check reports it
    with pytest.raises(CaseError, match=rf"case {ID}: .*t2.nii.gz: 1 non-finite \(NaN or inf\) voxels in the image"):
        load_case(case, finite=True)
    volume, problems = check_case(case)
    assert volume is not None and [str(problem) for problem in problems] == [
        f"case {ID}: {t2}: 1 non-finite (NaN or inf) voxels in the t2 image; replace them (e.g. by 0) or re-export it"
    ]


def test_the_check_command_lists_every_broken_file_and_exits_1(tmp_path):
    root = tmp_path / "dataset"
    broken = {}
    for index, (name, (ext, fault, expected)) in enumerate(HEADER_FAULTS.items(), start=1):
        broken[name] = (broken_case(root, case_id(LAYOUT, index), "t1", ext, fault), expected)
    result = subprocess.run(
        [sys.executable, "-m", "tumorseg.data", "check", str(root), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"{len(HEADER_FAULTS)} problem(s):" in lines
    for name, (path, expected) in broken.items():
        assert any(str(path) in line and expected in line for line in lines), name


# ------------------------------------------------------------------------------------------ prediction


@pytest.mark.parametrize(("ext", "fault", "expected"), FAULTS)
def test_predict_reads_name_the_case_and_the_file(tmp_path, ext, fault, expected):
    path = broken_case(tmp_path, ID, "t1ce", ext, fault)
    explicit = InputCase(ID, {m: tmp_path / ID / file_name(LAYOUT, ID, m, ext) for m in MODALITIES}, LAYOUT)
    (found,) = dataset_cases(tmp_path)
    for item in (explicit, found):
        with pytest.raises(CaseError) as caught:
            read_case(item, MODALITIES)
        assert str(caught.value).startswith(f"case {ID}: {path}: ") and expected in str(caught.value)


@pytest.mark.parametrize("value", [np.nan, -np.inf])
def test_predict_refuses_non_finite_voxels(tmp_path, value):
    flair = case_with_non_finite(tmp_path, "flair", value)
    explicit = InputCase(ID, {m: flair.parent / file_name(LAYOUT, ID, m) for m in MODALITIES}, LAYOUT)
    (found,) = dataset_cases(tmp_path)
    for item in (explicit, found):
        with pytest.raises(CaseError) as caught:
            read_case(item, MODALITIES)
        assert_names(caught.value, flair, "1 non-finite (NaN or inf) voxels in the image; replace them")


def test_predict_refuses_a_4d_modality_file(tmp_path):
    folder = write_case(tmp_path, LAYOUT, ID, shape=SHAPE)
    t2 = write_nifti(folder / file_name(LAYOUT, ID, "t2"), np.zeros((*SHAPE, 3), np.float32), affine())
    explicit = InputCase(ID, {m: folder / file_name(LAYOUT, ID, m) for m in MODALITIES}, LAYOUT)
    with pytest.raises(CaseError, match=r"has shape \(12, 10, 8, 3\); a 3D image is expected"):
        read_case(explicit, MODALITIES)
    (found,) = dataset_cases(tmp_path)
    with pytest.raises(CaseError) as caught:
        read_case(found, MODALITIES)
    assert_names(caught.value, t2, "expected a 3D image, found shape (12, 10, 8, 3)")


# ------------------------------------------------------------------------------------------ evaluation


def reference_folder(tmp_path: Path) -> Path:
    ref = tmp_path / "ref"
    write_nifti(ref / f"{ID}.nii.gz", label_data(LAYOUT, SHAPE), affine())
    return ref


@pytest.mark.parametrize(("ext", "fault", "expected"), FAULTS)
def test_evaluation_names_the_broken_prediction(tmp_path, ext, fault, expected):
    path = tmp_path / "pred" / f"{ID}{ext}"
    write_nifti(path, label_data(LAYOUT, SHAPE), affine())
    fault(path)
    for labels in ("brats2020", "auto"):
        result = evaluate_folder(path.parent, reference_folder(tmp_path), labels=labels, progress=False)
        assert result.rows == [] and list(result.errors) == [ID]
        assert_names(result.errors[ID], path, expected)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (np.zeros((*SHAPE, 2), np.uint8), "expected a 3D label map, found shape (12, 10, 8, 2)"),
        (np.full(SHAPE, np.nan, np.float32), "the label map holds non-finite (NaN or inf) values"),
        (np.full(SHAPE, np.inf, np.float32), "the label map holds non-finite (NaN or inf) values"),
        (np.full(SHAPE, 0.5, np.float32), "the label map holds fractional values"),
    ],
    ids=["4D", "NaN", "inf", "fractions"],
)
def test_evaluation_names_a_prediction_of_the_wrong_content(tmp_path, data, expected):
    path = write_nifti(tmp_path / "pred" / f"{ID}.nii.gz", data, affine())
    result = evaluate_folder(path.parent, reference_folder(tmp_path), labels="brats2020", progress=False)
    assert result.rows == [] and list(result.errors) == [ID]
    assert_names(result.errors[ID], path, expected)

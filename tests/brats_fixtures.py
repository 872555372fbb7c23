"""Tiny BraTS 2017-2019/2020/2021/2023 and MSD Task01 cases on disk, whole or broken in chosen ways.

Plain functions for tests that need dataset folders: the readers, the dataset check, the cache,
the datamodule. The file naming and label values of each layout are spelled out here rather
than taken from ``tumorseg.data.layouts``, so that tests compare the reader with the releases'
naming, not with itself. Import them from a test module in ``tests/`` (pytest puts that folder
on ``sys.path``)::

    from brats_fixtures import write_case, write_dataset

    write_dataset(tmp_path, "brats2020", 3)  # tmp_path/BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz ...
    write_case(tmp_path, "brats2023", "BraTS-GLI-00009-000", missing=("t1ce",), nan_in="t2")

Tests of the real exams in ``../shared/data`` (or ``$TUMORSEG_SHARED_DATA``) take ``shared_data``:
the real folder where it exists, else a synthetic stand-in in the same layout, so that a clone or
a source tarball without it still runs their checks.

Every image is an int16 ellipsoidal "brain" on a zero background whose values tell the modality
apart (``image_data``); every label holds all four classes (``internal_label``) written in the
layout's own values.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

MODALITIES = ("flair", "t1", "t1ce", "t2")
LAYOUTS = ("brats2018", "brats2020", "brats2021", "brats2023", "msd")
SHAPE = (12, 10, 8)
KAGGLE_355_LABEL = "W39_1998.09.19_Segm.nii"

# file suffix of each modality, in MODALITIES order, and between case id and suffix
SUFFIXES = {
    "brats2018": ("flair", "t1", "t1ce", "t2"),
    "brats2020": ("flair", "t1", "t1ce", "t2"),
    "brats2021": ("flair", "t1", "t1ce", "t2"),
    "brats2023": ("t2f", "t1n", "t1c", "t2w"),
}
SEPARATORS = {"brats2018": "_", "brats2020": "_", "brats2021": "_", "brats2023": "-"}
# internal class (0 background, 1 NCR, 2 ED, 3 ET) -> value written in the layout's label files
SOURCE_VALUES = {
    "brats2018": (0, 1, 2, 4),
    "brats2020": (0, 1, 2, 4),
    "brats2021": (0, 1, 2, 4),
    "brats2023": (0, 1, 2, 3),
    "msd": (0, 2, 1, 3),  # MSD: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour
}


def case_id(layout: str, index: int, *, split: str = "Training") -> str:
    """The id of case ``index`` in ``layout``: ``Brats18_TCIA01_001_1``, ``BraTS20_Training_001``,
    ``BraTS2021_00001``, ``BraTS-GLI-00001-000`` or ``BRATS_001``. ``split`` ("Training"/"Validation")
    is used by brats2020 only.
    """
    return {
        "brats2018": f"Brats18_TCIA01_{index:03d}_1",
        "brats2020": f"BraTS20_{split}_{index:03d}",
        "brats2021": f"BraTS2021_{index:05d}",
        "brats2023": f"BraTS-GLI-{index:05d}-000",
        "msd": f"BRATS_{index:03d}",
    }[layout]


def file_name(layout: str, case: str, role: str, ext: str = ".nii.gz") -> str:
    """File name of a BraTS case's ``role`` (a modality or "label"), e.g. ``BraTS-GLI-00001-000-t2f.nii.gz``."""
    suffix = "seg" if role == "label" else SUFFIXES[layout][MODALITIES.index(role)]
    return f"{case}{SEPARATORS[layout]}{suffix}{ext}"


def affine(spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """An LPS affine like the BraTS files' (x and y flipped), with voxel size ``spacing`` in mm."""
    return np.array(
        [[-spacing[0], 0, 0, 11.0], [0, -spacing[1], 0, 9.0], [0, 0, spacing[2], -3.0], [0, 0, 0, 1]],
        dtype=np.float64,
    )


def image_data(shape: tuple[int, int, int], modality: str, seed: int = 0) -> np.ndarray:
    """int16 phantom: zero outside an ellipsoid, inside 100 * (modality index + 1) plus noise in [0, 50)."""
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    brain = sum(axis**2 for axis in grid) <= 1.2
    rng = np.random.default_rng([seed, MODALITIES.index(modality)])
    values = 100 * (MODALITIES.index(modality) + 1) + rng.integers(0, 50, size=shape)
    return np.where(brain, values, 0).astype(np.int16)


def internal_label(shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 internal classes: nested boxes of edema (2), enhancing tumour (3) and necrosis (1) in the middle."""
    label = np.zeros(shape, dtype=np.uint8)
    for value, margin in ((2, 2), (3, 3), (1, 4)):
        inner = tuple(slice(min(margin, n // 2 - 1), max(n - margin, n // 2 + 1)) for n in shape)
        label[inner] = value
    return label


def label_data(layout: str, shape: tuple[int, int, int]) -> np.ndarray:
    """``internal_label`` in the label values of ``layout`` (uint8)."""
    return np.asarray(SOURCE_VALUES[layout], dtype=np.uint8)[internal_label(shape)]


def write_nifti(path: Path, data: np.ndarray, affine_: np.ndarray) -> Path:
    """Save ``data`` with ``affine_`` to ``path`` (.nii or .nii.gz), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine_), path)
    return path


def corrupt_file(path: Path) -> None:
    """Cut the file to three quarters of its bytes, as an interrupted download or extraction does."""
    content = path.read_bytes()
    path.write_bytes(content[: len(content) * 3 // 4])


def write_case(
    root: Path,
    layout: str,
    case: str,
    *,
    shape: tuple[int, int, int] = SHAPE,
    label: bool = True,
    seed: int = 0,
    ext: str = ".nii.gz",
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    split: str = "Tr",
    missing: Iterable[str] = (),
    wrong_shape: str | None = None,
    moved: str | None = None,
    nan_in: str | None = None,
    zero_in: str | None = None,
    bad_label: int | None = None,
    corrupt: str | None = None,
    label_name: str | None = None,
    resource_forks: bool = False,
) -> Path:
    """Write one case of ``layout`` under ``root``, optionally broken.

    BraTS layouts write ``root/<case>/<case><sep><suffix><ext>``; ``msd`` writes
    ``root/imagesTr/<case><ext>`` (4D, X×Y×Z×4 float32) and ``root/labelsTr/<case><ext>``, or
    ``root/imagesTs/<case><ext>`` with ``split="Ts"`` (never a label). The options naming a file
    take a modality of ``MODALITIES`` or "label" (for ``msd``: "image" or "label"; ``nan_in`` and
    ``zero_in`` then name the channel).

    Args:
        root: Dataset root (BraTS: the folder holding the case folders; MSD: the Task01 folder).
        layout: One of ``LAYOUTS``.
        case: The case id, e.g. ``case_id(layout, 1)``.
        shape: Voxels along x, y, z. Defaults to (12, 10, 8).
        label: Write the label file. Defaults to True.
        seed: Seed of the image noise. Defaults to 0.
        ext: ".nii.gz" or ".nii". Defaults to ".nii.gz".
        spacing: Voxel size in mm. Defaults to 1 mm isotropic.
        split: MSD only: "Tr" (imagesTr/labelsTr) or "Ts" (imagesTs). Defaults to "Tr".
        missing: Files not to write.
        wrong_shape: File written one voxel longer along x.
        moved: File whose affine is shifted by 5 mm along x.
        nan_in: Modality written as float32 with one NaN voxel.
        zero_in: Modality written as all zeros.
        bad_label: Value written into one corner voxel of the label.
        corrupt: File cut short after writing (``corrupt_file``).
        label_name: Name of the label file instead of the layout's (e.g. ``KAGGLE_355_LABEL``).
        resource_forks: Also write a macOS ``._<name>`` file of junk bytes next to each file.

    Returns:
        The case folder (BraTS) or ``root`` (MSD).
    """
    root = Path(root)
    missing = set(missing)
    images = {modality: image_data(shape, modality, seed) for modality in MODALITIES}
    if nan_in:
        images[nan_in] = images[nan_in].astype(np.float32)
        images[nan_in][shape[0] // 2, shape[1] // 2, shape[2] // 2] = np.nan
    if zero_in:
        images[zero_in] = np.zeros_like(images[zero_in])
    seg = label_data(layout, shape)
    if bad_label is not None:
        seg[0, 0, 0] = bad_label

    if layout == "msd":
        folder = root
        volume = np.stack([images[modality] for modality in MODALITIES], axis=-1).astype(np.float32)
        files = {"image": (f"images{split}/{case}{ext}", volume)}
        if label and split == "Tr":
            files["label"] = (f"labelsTr/{case}{ext}", seg)
    else:
        folder = root / case
        files = {modality: (file_name(layout, case, modality, ext), images[modality]) for modality in MODALITIES}
        if label:
            files["label"] = (label_name or file_name(layout, case, "label", ext), seg)

    for role, (name, data) in files.items():
        if role in missing:
            continue
        if role == wrong_shape:
            data = np.concatenate([data, data[-1:]], axis=0)
        file_affine = affine(spacing)
        if role == moved:
            file_affine[0, 3] += 5.0
        path = write_nifti(folder / name, data, file_affine)
        if role == corrupt:
            corrupt_file(path)
        if resource_forks:
            (path.parent / f"._{path.name}").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    return folder


def write_msd_index(
    root: Path,
    training: Iterable[str],
    test: Iterable[str] = (),
    *,
    modality: tuple[str, ...] = ("FLAIR", "T1w", "t1gd", "T2w"),
) -> Path:
    """Write ``root/dataset.json`` as in Task01_BrainTumour, listing the given case ids."""
    index = {
        "name": "BRATS",
        "modality": {str(i): name for i, name in enumerate(modality)},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in training],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test],
    }
    path = Path(root) / "dataset.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(index, indent=4))
    return path


def write_dataset(root: Path, layout: str, n_cases: int, *, start: int = 1, test_cases: int = 0, **kw) -> list[str]:
    """Write ``n_cases`` cases of ``layout`` under ``root`` (and dataset.json for ``msd``).

    Args:
        root: Dataset root.
        layout: One of ``LAYOUTS``.
        n_cases: Number of cases, with ids ``case_id(layout, i)`` for i from ``start`` on.
        start: Index of the first case. Defaults to 1.
        test_cases: MSD only: number of further cases written to imagesTs/. Defaults to 0.
        **kw: Passed to ``write_case`` for every case (``seed`` defaults to the case index).

    Returns:
        The case ids written, training cases first.
    """
    ids = []
    for index in range(start, start + n_cases + test_cases):
        split = "Tr" if index < start + n_cases else "Ts"
        ids.append(case_id(layout, index))
        write_case(root, layout, ids[-1], **{"seed": index, "split": split, **kw})
    if layout == "msd":
        write_msd_index(root, ids[:n_cases], ids[n_cases:])
    return ids


def file_states(root: Path) -> dict[Path, tuple[str, int]]:
    """SHA-256 and modification time (ns) of every file under ``root``, to show that nothing was changed."""
    return {
        path: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(Path(root).rglob("*"))
        if path.is_file()
    }


# ------------------------------------------------------------------------------------ shared test data

SHARED_DATA = Path(os.environ.get("TUMORSEG_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
EXAM_2023 = "BraTS-GLI-00001-000"  # no label
EXAM_2020 = "real2020/BraTS20_Training_990"  # with a label
REAL_SHAPE = (240, 240, 155)
STAND_IN_SHAPE = (48, 40, 32)


@dataclass(frozen=True)
class SharedData:
    """The shared exams: ``root`` holds ``EXAM_2023`` and ``EXAM_2020``; ``real`` tells the real
    exams from the stand-in."""

    root: Path
    real: bool

    @property
    def exam_2023(self) -> Path:
        return self.root / EXAM_2023

    @property
    def shape(self) -> tuple[int, int, int]:
        return REAL_SHAPE if self.real else STAND_IN_SHAPE


def shared_data(stand_in_root: Path) -> SharedData:
    """The real exams of ``SHARED_DATA`` when present; else synthetic phantoms written under
    ``stand_in_root`` with the same names, layouts, int16 images and LPS 1 mm affine (at
    ``STAND_IN_SHAPE``), the BraTS 2023 exam without a label as the real one."""
    if (SHARED_DATA / EXAM_2023).is_dir():
        return SharedData(SHARED_DATA, True)
    from tumorseg.phantoms import brats_affine, make_phantom

    root = Path(stand_in_root)
    affine = brats_affine(STAND_IN_SHAPE)
    affine[:3, :3] = np.sign(affine[:3, :3])  # 1 mm voxels, as the real exams, in their LPS orientation
    for index, (folder, layout, roles) in enumerate(
        [(EXAM_2023, "brats2023", MODALITIES), (EXAM_2020, "brats2020", (*MODALITIES, "label"))], start=1
    ):
        images, label = make_phantom(np.random.default_rng([2023, index]), STAND_IN_SHAPE)
        arrays = {**images, "label": label}
        for role in roles:
            path = root / folder / file_name(layout, Path(folder).name, role)
            write_nifti(path, arrays[role], affine)
    return SharedData(root, False)

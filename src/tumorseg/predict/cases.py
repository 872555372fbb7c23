"""The cases to segment: found in a dataset (any layout ``tumorseg.data.layouts`` knows) or given
as explicit modality files, and read into arrays on their source grid."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from tumorseg.data.layouts import LAYOUTS, Case, CaseError, Problem, discover
from tumorseg.data.reading import load_case
from tumorseg.io import NiftiError, grid_mismatch, read_nifti, spacing
from tumorseg.labels import MODALITIES

log = logging.getLogger(__name__)

# BraTS 2023 file suffixes name the same modalities differently
_SUFFIXES = {"flair": ("flair", "t2f"), "t1": ("t1", "t1n"), "t1ce": ("t1ce", "t1c"), "t2": ("t2", "t2w")}


class PredictionError(ValueError):
    """Prediction cannot start: bad options, checkpoints or inputs (the message says which)."""


@dataclass
class InputCase:
    """One case to segment: its modality files, the label convention of its layout, and its
    reference label file where the dataset has one."""

    case_id: str
    files: dict[str, Path]  # modality -> file; for MSD the one 4D file under "image"
    convention: str
    reference: Path | None = None
    layout: str | None = None


def explicit_case(files: dict[str, str | None], case_id: str | None, convention: str) -> InputCase:
    """A case from explicit modality files (``files.flair=... files.t1=...``)."""
    given = {m: Path(p).expanduser() for m, p in files.items() if p}
    unknown = sorted(set(given) - set(MODALITIES))
    if unknown:
        raise PredictionError(
            f"files.{unknown[0]}: unknown modality; use {', '.join(f'files.{m}' for m in MODALITIES)}."
        )
    if not given:
        raise PredictionError(
            "Give `input=PATH` (a case folder or a dataset root) or the modality files `files.<m>=PATH`."
        )
    for modality, path in given.items():
        if not path.is_file():
            raise PredictionError(f"files.{modality}={path}: no such file.")
    if case_id is None:
        first = given.get("flair") or next(iter(given.values()))
        case_id = first.name.split(".nii")[0]
        for suffix in (*_SUFFIXES.get("flair", ()), *(s for m in MODALITIES for s in _SUFFIXES[m])):
            for sep in ("_", "-"):
                if case_id.endswith(sep + suffix):
                    case_id = case_id[: -len(sep + suffix)]
                    break
    return InputCase(case_id=case_id, files=given, convention=convention)


def dataset_cases(root: str | Path, layout: str | None = None) -> list[InputCase]:
    """Every case under a dataset root or in a single case folder, with their references if any;
    the problems of the cases left out are logged."""
    return find_cases(root, layout)[0]


def find_cases(root: str | Path, layout: str | None = None) -> tuple[list[InputCase], list[Problem]]:
    """``dataset_cases`` and the problems of the cases left out (each logged as skipped)."""
    discovery = discover(root, require_labels=False, layout=layout)
    for problem in discovery.problems:
        log.warning("Skipped: %s", problem)
    if not discovery.cases:
        raise PredictionError(f"{root}: no usable case found ({len(discovery.problems)} problem(s) listed above).")
    cases = []
    for case in discovery.cases:
        files = {"image": case.images[0]} if case.layout == "msd" else dict(zip(MODALITIES, case.images))
        cases.append(InputCase(case.case_id, files, case.label_convention, case.label, case.layout))
    return cases, discovery.problems


def read_case(
    item: InputCase, needed: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray, tuple, nib.Nifti1Header]:
    """The needed modalities as float32 arrays, the affine, the spacing and the header of the
    first image file (for writing the output in the same space).

    Raises:
        CaseError: a needed modality is missing, a file cannot be read or is not 3D, or the files
            do not share one voxel grid.
    """
    missing = [m for m in needed if m not in item.files and "image" not in item.files]
    if missing:
        raise CaseError(
            f"case {item.case_id}: the model needs {list(needed)}, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing; give files.{missing[0]}=PATH."
        )
    if item.layout is not None and item.layout in LAYOUTS:
        images = (item.files["image"],) if "image" in item.files else tuple(item.files[m] for m in MODALITIES)
        volume = load_case(Case(item.case_id, item.layout, images, None), finite=True)
        arrays = {m: volume.image[i] for i, m in enumerate(MODALITIES)}
        header = _read(item, images[0])[0].header
        return {m: arrays[m] for m in needed}, volume.affine, volume.spacing, header
    arrays, first = {}, None
    for modality in needed:
        path = item.files[modality]
        image, data = _read(item, path)
        if data.ndim != 3:
            raise CaseError(f"case {item.case_id}: {path} has shape {data.shape}; a 3D image is expected.")
        if first is None:
            first = (path, image)
        elif problem := grid_mismatch(image, *first):
            raise CaseError(f"case {item.case_id}: {path}: {problem}.")
        arrays[modality] = np.asarray(data, dtype=np.float32)
    reference = first[1]
    return arrays, np.asarray(reference.affine, dtype=np.float64), spacing(reference), reference.header


def _read(item: InputCase, path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    try:
        return read_nifti(path, finite=True)
    except NiftiError as err:
        raise CaseError(f"case {item.case_id}: {err}") from err

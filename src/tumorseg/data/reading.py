"""Reading one case of a dataset (``tumorseg.data.layouts`` finds them): ``load_case`` reads it into a
``Volume``: the four modalities stacked in ``MODALITIES`` order as float32, the label mapped to the
internal classes, and the affine of the first image. Voxels keep the order they are stored in: nothing
is reoriented, so a prediction written back with the same affine lines up with the input.
``check_case`` reads a case once and reports every problem of its content, for the dataset check and
the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from tumorseg.data.layouts import CONVENTION_LAYOUTS, MSD_CHANNELS, Case, CaseError, Problem, Volume, convention_hint
from tumorseg.io import NiftiError, grid_mismatch, label_voxels, non_finite, read_nifti, spacing
from tumorseg.labels import ALL_CONVENTIONS, MODALITIES, to_internal, unexpected_values


def load_case(case: Case, *, finite: bool = False) -> Volume:
    """Read a case: the modalities stacked as float32, the label as internal classes, voxels as stored.

    Args:
        case: The case to read.
        finite: Refuse images that hold NaN or inf voxels (``check_case`` reports them).

    Raises:
        CaseError: A file cannot be read, its header is corrupt (see ``io.header_problem``), it has
            the wrong number of dimensions, does not share the shape or affine of the first image,
            the label holds values its convention does not define, or, with ``finite``, an image
            holds NaN or inf. The message names the case and the file.
    """
    volume, problems = _read_case(case, inspect=False, finite=finite)
    if volume is None:
        raise CaseError("\n".join(str(problem) for problem in problems))
    return volume


def check_case(case: Case) -> tuple[Volume | None, list[Problem]]:
    """Read a case once and report every problem of its content.

    Besides what makes ``load_case`` fail, reports non-finite voxels and images that are all zero.

    Returns:
        The volume (None where it cannot be loaded) and the problems found.
    """
    return _read_case(case, inspect=True, finite=False)


def _read_case(case: Case, *, inspect: bool, finite: bool) -> tuple[Volume | None, list[Problem]]:
    """Read all files of a case, collecting the problems of each instead of stopping at the first.

    The volume is None when any problem makes the case unusable; with ``inspect``, non-finite
    voxels and all-zero modalities are reported too, without making it unusable; with ``finite``,
    non-finite voxels make it unusable.
    """
    problems: list[Problem] = []
    usable = True

    def fail(message: str, path: Path, label_values: tuple[int, ...] = ()) -> None:
        nonlocal usable
        usable = False
        problems.append(Problem(message, case.case_id, path, label_values))

    multichannel = case.layout == "msd"
    reference = None  # (path, image) that the other files must match
    channels: list[np.ndarray] = []
    for index, path in enumerate(case.images):
        try:
            image, data = read_nifti(path, finite=finite)
        except NiftiError as error:
            fail(error.reason, path)
            continue
        if multichannel and (data.ndim != 4 or data.shape[-1] != len(MODALITIES)):
            fail(
                f"expected a 4D image of shape (X, Y, Z, 4) holding {', '.join(MSD_CHANNELS)}, found shape "
                f"{data.shape}; use the images of the Task01_BrainTumour archive",
                path,
            )
            continue
        if not multichannel and data.ndim != 3:
            fail(f"expected a 3D image, found shape {data.shape}; BraTS stores one modality per 3D file", path)
            continue
        reference = reference or (path, image)
        mismatch = grid_mismatch(image, *reference)
        if mismatch:
            fail(mismatch, path)
            continue
        file_channels = [data[..., c] for c in range(data.shape[-1])] if multichannel else [data]
        for offset, channel in enumerate(file_channels):
            modality = MODALITIES[index + offset]
            if inspect:
                where = (
                    f"channel {index + offset} ({modality}) of the 4D image"
                    if multichannel
                    else f"the {modality} image"
                )
                problems.extend(Problem(message, case.case_id, path) for message in _content_problems(channel, where))
            channels.append(channel)

    label = None
    if case.label is not None:
        label = _read_label(case, reference, fail)

    if not usable:
        return None, problems
    _, first = reference
    # Each channel keeps NIfTI's memory order (x fastest): copying into C order would transpose
    # every voxel and take about as long as decoding the gzip files.
    stacked = np.empty((len(channels), *channels[0].shape[::-1]), dtype=np.float32).transpose(0, 3, 2, 1)
    for index, channel in enumerate(channels):
        stacked[index] = channel
    return Volume(stacked, label, first.affine.astype(np.float64), spacing(first)), problems


def _content_problems(channel: np.ndarray, where: str) -> list[str]:
    problem = non_finite(channel, where)
    if problem:
        return [problem]
    if not channel.any():
        return [f"{where} is all zeros; the modality is empty: re-export or re-download it"]
    return []


def _read_label(
    case: Case, reference: tuple[Path, nib.Nifti1Image] | None, fail: Callable[..., None]
) -> np.ndarray | None:
    """The label of ``case`` as internal classes, or None after calling ``fail`` with what is wrong."""
    path = case.label
    try:
        image, data = read_nifti(path)
        data = label_voxels(data, path)  # 3D, finite, whole numbers
    except NiftiError as error:
        fail(error.reason, path)
        return None
    mismatch = grid_mismatch(image, *reference) if reference else None
    if mismatch:
        fail(mismatch, path)
        return None
    convention = case.label_convention
    try:
        return to_internal(data, convention, source=str(path))
    except ValueError:
        bad, allowed = unexpected_values(data, convention), sorted(ALL_CONVENTIONS[convention])
        hint = ""
        other = next((c for c, layout in CONVENTION_LAYOUTS.items() if layout == case.layout), None)
        if case.convention is None and other and set(bad) <= set(ALL_CONVENTIONS[other]):
            # e.g. a 4 in a 2023-named case: BraTS 2024's resection cavity
            hint = f"; {convention_hint(other, case.layout)}"
        fail(
            f"label values {bad} are not part of the {convention} convention (values {allowed}); "
            f"check the layout (--layout) or fix the label file{hint}",
            path,
            tuple(bad),
        )
        return None

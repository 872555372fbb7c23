"""BraTS evaluation of predicted label maps against references: ``python -m tumorseg.evaluate``.

For each case and region (WT, TC, ET; see ``data.labels``) it reports Dice, the 95th percentile
Hausdorff distance, sensitivity, specificity and the predicted and reference volumes, with the
BraTS conventions for empty masks: a region absent from both prediction and reference has Dice 1
and HD95 0, a region present in only one of them Dice 0 and HD95 ``HD95_EMPTY`` (373.13 mm, the
value of the BraTS evaluation platform). The HD95 is medpy's ``hd95``: the 95th percentile of the
surface distances of both directions pooled, computed inside the bounding box of the two masks so
that a whole 240x240x155 volume takes a few tens of milliseconds.

The command line::

    python -m tumorseg.evaluate --pred predictions/ --ref MICCAI_BraTS2020_TrainingData/
    python -m tumorseg.evaluate --pred predictions/ --ref labels/ --labels brats2023 --out runs/metrics.csv

``--pred`` is a folder of ``<case_id>.nii.gz`` label maps (what ``tumorseg.predict`` writes) or a
single file; ``--ref`` a dataset root that ``data.layouts.discover`` recognises, or a folder of
``<case_id>.nii.gz`` label maps. It writes a CSV with one row per case and region, a JSON with the
same values, their summary and the cases that could not be evaluated, and prints the summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from tumorseg.data.layouts import DatasetError, discover, select_cases
from tumorseg.labels import CLASSES, CONVENTIONS, REGION_CLASSES, REGIONS, to_internal, unexpected_values

HD95_EMPTY = 373.13
"""HD95 in mm of a region present in exactly one of prediction and reference (BraTS convention)."""

METRICS = ("dice", "hd95", "sensitivity", "specificity", "pred_volume_cm3", "ref_volume_cm3")
COLUMNS = ("case_id", "region", *METRICS)
LABEL_CHOICES = ("auto", *CONVENTIONS)

# The two masks are zero outside their joint bounding box, so one voxel of margin keeps erosion at
# the box's edge as in the full volume, and every surface voxel (all EDT sources) lies inside it.
_CROP_MARGIN = 1
_NIFTI_NAME = re.compile(r"(?P<case>[^.].*)\.nii(?:\.gz)?")
# tumorseg.predict writes these next to the label maps; they are 4D maps, not predictions
_IGNORED_SUFFIXES = ("_probabilities",)
# nibabel's errors for a missing, truncated or corrupt file
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, OverflowError, zlib.error)


class EvaluationError(ValueError):
    """The inputs cannot be evaluated at all (missing folder, no label files, unknown convention)."""


class _CaseError(ValueError):
    """One case cannot be evaluated; the message names the files at fault."""


@dataclass
class EvaluationResult:
    """What ``evaluate_folder`` found.

    Attributes:
        rows: One dict per evaluated case and region with the keys of ``COLUMNS``, sorted by case
            id then in ``REGIONS`` order; NaN where a metric is undefined.
        summary: region -> metric -> ``{"mean", "median", "std"}`` over the cases, NaNs ignored
            (NaN when no case has a value); std is the population standard deviation.
        missing: Case id -> why it has no counterpart (a prediction without reference or a
            reference without prediction).
        errors: Case id -> why the case could not be evaluated (unreadable file, shape mismatch,
            label values outside the convention...).
        labels: The label convention the prediction files were read with.
        labels_reason: How that convention was chosen, for the user.
        csv_path: The CSV written, or None.
        json_path: The JSON written, or None.
    """

    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, float]]]
    missing: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    labels: str = ""
    labels_reason: str = ""
    csv_path: Path | None = None
    json_path: Path | None = None

    @property
    def ok(self) -> bool:
        """True when every case had a counterpart and was evaluated."""
        return not self.missing and not self.errors

    @property
    def case_ids(self) -> list[str]:
        """The evaluated cases, sorted."""
        return sorted({row["case_id"] for row in self.rows})


# --------------------------------------------------------------------------------------------- metrics


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(size) for size in np.atleast_1d(np.asarray(spacing, dtype=np.float64)))
    if len(spacing) != ndim or not all(math.isfinite(size) and size > 0 for size in spacing):
        raise ValueError(f"spacing must be {ndim} positive voxel sizes in mm, got {spacing}.")
    return spacing


def _check_masks(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred).astype(bool, copy=False), np.asarray(ref).astype(bool, copy=False)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must have the same shape, got {pred.shape} and {ref.shape}.")
    if pred.ndim == 0:
        raise ValueError("pred and ref must be arrays of at least one dimension, got scalars.")
    return pred, ref


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the bounding box of a non-empty ``mask``, grown by ``margin`` voxels and clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(other for other in range(mask.ndim) if other != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    # medpy's definition: the voxels that one erosion with the face-connected structure removes
    structure = generate_binary_structure(mask.ndim, 1)
    return mask ^ binary_erosion(mask, structure=structure, iterations=1)


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], *, crop: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of one mask to the nearest surface voxel of the other.

    Surface voxels are those that one binary erosion with the face-connected structure removes
    (voxels on the array border count as surface), as in ``medpy.metric.binary``.

    Args:
        pred: Predicted mask; non-zero is foreground. Must not be empty.
        ref: Reference mask of the same shape. Must not be empty.
        spacing: Voxel size in mm along each axis.
        crop: Compute inside the bounding box of both masks (plus a margin) rather than the whole
            array; the result is the same. Defaults to True.

    Returns:
        ``(pred_to_ref, ref_to_pred)``: float64 arrays, one distance per surface voxel of
        ``pred`` and of ``ref``, in the voxels' C order.

    Raises:
        ValueError: The shapes differ, the spacing does not fit, or a mask is empty.
    """
    pred, ref = _check_masks(pred, ref)
    spacing = _check_spacing(spacing, pred.ndim)
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks.")
    if crop:
        box = _bounding_box(pred | ref, _CROP_MARGIN)
        pred, ref = pred[box], ref[box]
    pred_surface, ref_surface = _surface(pred), _surface(ref)
    # EDT of the complement: each voxel's distance to the nearest surface voxel of the other mask
    pred_to_ref = distance_transform_edt(~ref_surface, sampling=spacing)[pred_surface]
    ref_to_pred = distance_transform_edt(~pred_surface, sampling=spacing)[ref_surface]
    return pred_to_ref, ref_to_pred


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], *, crop: bool = True) -> float:
    """95th percentile Hausdorff distance in mm, as ``medpy.metric.binary.hd95``, with BraTS's empty-mask rules.

    The 95th percentile (``np.percentile``, linear interpolation) of the surface distances of
    both directions pooled (see ``surface_distances``).

    Args:
        pred: Predicted mask; non-zero is foreground.
        ref: Reference mask of the same shape.
        spacing: Voxel size in mm along each axis.
        crop: Compute inside the bounding box of both masks only; the result is the same as over
            the whole array. Defaults to True.

    Returns:
        The distance in mm; 0.0 when both masks are empty, ``HD95_EMPTY`` when exactly one is.

    Raises:
        ValueError: The shapes differ or the spacing does not fit.
    """
    pred, ref = _check_masks(pred, ref)
    spacing = _check_spacing(spacing, pred.ndim)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return HD95_EMPTY
    pred_to_ref, ref_to_pred = surface_distances(pred, ref, spacing, crop=crop)
    return float(np.percentile(np.hstack((pred_to_ref, ref_to_pred)), 95))


def region_metrics(
    pred_label: np.ndarray, ref_label: np.ndarray, spacing: Sequence[float]
) -> dict[str, dict[str, float]]:
    """Per-region metrics of a predicted internal label map against the reference.

    Args:
        pred_label: Predicted label map of internal classes 0-3 (see ``data.labels``).
        ref_label: Reference label map of the same shape.
        spacing: Voxel size in mm along each axis (from the reference header).

    Returns:
        ``{region: {metric: value}}`` for the regions of ``REGIONS`` and the metrics of
        ``METRICS``: ``dice`` (1 when the region is empty in both, 0 when in exactly one),
        ``hd95`` in mm (see ``hd95``), ``sensitivity`` TP / (TP + FN) (NaN when the reference
        region is empty), ``specificity`` TN / (TN + FP) (NaN when the reference region fills the
        volume), ``pred_volume_cm3`` and ``ref_volume_cm3``.

    Raises:
        ValueError: The shapes differ, the spacing does not fit, or a map holds values outside 0-3.
    """
    pred_label, ref_label = np.asarray(pred_label), np.asarray(ref_label)
    if pred_label.shape != ref_label.shape:
        raise ValueError(
            f"pred and ref label maps must have the same shape, got {pred_label.shape} and {ref_label.shape}."
        )
    spacing = _check_spacing(spacing, ref_label.ndim)
    for name, label in (("pred", pred_label), ("ref", ref_label)):
        if label.size and (label.min() < 0 or label.max() >= len(CLASSES)):
            raise ValueError(
                f"{name} must hold internal classes 0..{len(CLASSES) - 1}, got {label.min()}..{label.max()}."
            )
    voxel_mm3 = float(np.prod(spacing))
    n_voxels = ref_label.size
    # Every region lies inside the box of the tumour voxels of both maps; outside it only adds true
    # negatives. Cropping once makes a whole BraTS volume cost what its tumours cost.
    tumour = (pred_label != 0) | (ref_label != 0)
    box = _bounding_box(tumour, 0) if tumour.any() else (slice(0, 0),) * tumour.ndim
    pred_label, ref_label = pred_label[box], ref_label[box]
    metrics = {}
    for region in REGIONS:
        lookup = np.zeros(len(CLASSES), dtype=bool)
        lookup[list(REGION_CLASSES[region])] = True
        pred, ref = lookup[pred_label], lookup[ref_label]
        tp = int(np.count_nonzero(pred & ref))
        n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
        fp, fn = n_pred - tp, n_ref - tp
        tn = n_voxels - tp - fp - fn
        metrics[region] = {
            "dice": 2.0 * tp / (n_pred + n_ref) if n_pred + n_ref else 1.0,
            "hd95": hd95(pred, ref, spacing),
            "sensitivity": tp / n_ref if n_ref else math.nan,
            "specificity": tn / (tn + fp) if tn + fp else math.nan,
            "pred_volume_cm3": n_pred * voxel_mm3 / 1000.0,
            "ref_volume_cm3": n_ref * voxel_mm3 / 1000.0,
        }
    return metrics


def summarise(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """region -> metric -> ``{"mean", "median", "std"}`` over the rows, NaNs ignored (NaN when none is left)."""
    rows = list(rows)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for region in REGIONS:
        summary[region] = {}
        for metric in METRICS:
            values = np.array([row[metric] for row in rows if row["region"] == region], dtype=np.float64)
            values = values[~np.isnan(values)]
            if values.size:
                stats = {"mean": np.mean(values), "median": np.median(values), "std": np.std(values)}
            else:
                stats = dict.fromkeys(("mean", "median", "std"), math.nan)
            summary[region][metric] = {name: float(value) for name, value in stats.items()}
    return summary


# ------------------------------------------------------------------------------------------- reading


def _read_label_file(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """The integer voxels and the image of a 3D label file; ``_CaseError`` saying what is wrong otherwise."""
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except _READ_ERRORS as error:
        raise _CaseError(f"{path}: cannot read the file ({error}); it is missing, truncated or corrupt") from error
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise _CaseError(f"{path}: expected a 3D label map, found shape {data.shape}")
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise _CaseError(f"{path}: the label map holds non-finite (NaN or inf) values")
        rounded = np.rint(data)
        # float storage is fine, fractions are not: they come from resampling with interpolation
        if np.abs(data - rounded).max(initial=0) > 1e-3:
            raise _CaseError(f"{path}: the label map holds fractional values; resample labels with nearest neighbours")
        data = rounded.astype(np.int64)
    elif data.dtype.kind not in "iub":
        raise _CaseError(f"{path}: label maps must hold integers, found {data.dtype}")
    return data, image


def _label_values(data: np.ndarray) -> set[int]:
    if data.dtype.kind in "ub" or (data.size and data.min() >= 0 and data.max() < 65536):
        # far faster than np.unique's sort on a whole volume
        return {int(value) for value in np.flatnonzero(np.bincount(data.ravel(order="K").astype(np.intp, copy=False)))}
    return {int(value) for value in np.unique(data)}


def _to_internal(data: np.ndarray, convention: str, path: Path) -> np.ndarray:
    bad = unexpected_values(data, convention)
    if bad:
        raise _CaseError(
            f"{path}: label values {bad} are not part of the {convention} convention "
            f"(values {sorted(CONVENTIONS[convention])}); pass the right --labels, or fix the file"
        )
    return to_internal(data, convention, source=str(path))


def _spacing(image: nib.Nifti1Image) -> tuple[float, float, float]:
    return tuple(float(size) for size in image.header.get_zooms()[:3])


# ------------------------------------------------------------------------------------------ per case


@dataclass(frozen=True)
class _Job:
    """One case to evaluate: small, so that it travels cheaply to a worker process."""

    case_id: str
    pred: Path
    ref: Path
    pred_labels: str
    ref_labels: str


def _evaluate_job(job: _Job) -> tuple[str, list[dict[str, Any]] | None, str | None]:
    """``(case_id, rows, None)``, or ``(case_id, None, error)`` listing every problem of the case."""
    problems, read = [], {}
    for role in ("pred", "ref"):
        try:
            read[role] = _read_label_file(getattr(job, role))
        except _CaseError as error:
            problems.append(str(error))
    if len(read) == 2:
        (pred, _), (ref, ref_image) = read["pred"], read["ref"]
        if pred.shape != ref.shape:
            problems.append(
                f"shape mismatch: the prediction {job.pred} has shape {pred.shape}, the reference {job.ref} "
                f"has shape {ref.shape}; predictions must lie on the reference's voxel grid"
            )
    internal = {}
    for role, (data, _) in read.items():
        try:
            internal[role] = _to_internal(data, getattr(job, f"{role}_labels"), getattr(job, role))
        except _CaseError as error:
            problems.append(str(error))
    if problems:
        return job.case_id, None, "; ".join(problems)
    metrics = region_metrics(internal["pred"], internal["ref"], _spacing(ref_image))
    return job.case_id, [{"case_id": job.case_id, "region": region, **metrics[region]} for region in REGIONS], None


def _values_job(job: _Job) -> tuple[str, set[int] | None, str | None]:
    """The label values of both files of a case, for ``--labels auto``."""
    values, problems = set(), []
    for path in (job.pred, job.ref):
        try:
            values |= _label_values(_read_label_file(path)[0])
        except _CaseError as error:
            problems.append(str(error))
    return (job.case_id, None, "; ".join(problems)) if problems else (job.case_id, values, None)


def _run(function: Callable, jobs: list[_Job], workers: int, description: str, progress: bool) -> Iterator:
    """``function(job)`` for every job, in worker processes when ``workers > 1``, with a progress bar."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task(description, total=len(jobs))
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield function(job)
                bar.advance(task)
            return
        # spawn, not fork: forking a process that runs threads (rich's refresh, torch) can deadlock
        pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn"))
        try:
            for future in as_completed([pool.submit(function, job) for job in jobs]):
                yield future.result()
                bar.advance(task)
        finally:
            pool.shutdown(cancel_futures=True)


# ------------------------------------------------------------------------------------------- pairing


def _label_files(folder: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """``<case_id>.nii[.gz]`` files directly in ``folder``: case id -> path, and case id -> duplicate error."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        match = _NIFTI_NAME.fullmatch(path.name)
        if match is None or not path.is_file() or match["case"].endswith(_IGNORED_SUFFIXES):
            continue
        found.setdefault(match["case"], []).append(path)
    files = {case: paths[0] for case, paths in found.items() if len(paths) == 1}
    duplicates = {
        case: f"{len(paths)} files for one case ({', '.join(str(path) for path in paths)}); keep one"
        for case, paths in found.items()
        if len(paths) > 1
    }
    return files, duplicates


def _single_case_id(path: Path) -> str:
    match = _NIFTI_NAME.fullmatch(path.name)
    if match is None:
        raise EvaluationError(f"{path} is not a NIfTI file (.nii or .nii.gz).")
    return match["case"]


@dataclass
class _References:
    files: dict[str, Path]  # case id -> reference label file
    conventions: dict[str, str]  # case id -> label convention of that file; empty for plain files
    layout: str | None  # the dataset layout, None for plain files
    notes: dict[str, str]  # case id -> why the dataset has no usable reference for it
    errors: dict[str, str]


def _references(ref: Path) -> _References:
    if ref.is_file():
        return _References({_single_case_id(ref): ref}, {}, None, {}, {})
    if not ref.is_dir():
        raise EvaluationError(f"the reference {ref} does not exist.")
    try:
        discovery = discover(ref)
    except DatasetError as error:
        discovery, why_not = None, str(error)
    else:
        why_not = f"{ref} is a {discovery.layout} dataset without label files (validation or test data?)."
    labelled = [case for case in discovery.cases if case.label is not None] if discovery else []
    if labelled:
        notes = {}
        for problem in discovery.problems:
            if problem.case_id:
                notes.setdefault(problem.case_id, str(problem))
        return _References(
            {case.case_id: case.label for case in labelled},
            {case.case_id: case.layout for case in labelled},
            discovery.layout,
            notes,
            {},
        )
    files, duplicates = _label_files(ref)
    if not files and not duplicates:
        raise EvaluationError(
            f"the reference {ref} is neither a dataset with label files nor a folder of <case_id>.nii.gz "
            f"label files.\n{why_not}"
        )
    return _References(files, {}, None, {}, duplicates)


def _choose_labels(values: set[int]) -> str:
    """The convention of plain label files holding ``values``: BraTS 2020's if a 4 is there, else 2023's."""
    return "brats2020" if 4 in values and values <= set(CONVENTIONS["brats2020"]) else "brats2023"


# ----------------------------------------------------------------------------------------- the whole


def evaluate_folder(
    pred: str | os.PathLike,
    ref: str | os.PathLike,
    labels: str = "auto",
    out: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = True,
    cases: Sequence[str] | None = None,
) -> EvaluationResult:
    """Evaluate predicted label maps against references and write the CSV and JSON.

    Args:
        pred: A folder of ``<case_id>.nii.gz`` (or ``.nii``) label maps, or one such file. Other
            files (``.png``, ``.csv``, ``*_probabilities.nii.gz``, hidden files) are ignored.
        ref: A dataset root that ``data.layouts.discover`` recognises (the references are the
            cases' label files, read in the layout's convention), a folder of
            ``<case_id>.nii.gz`` label maps, or one such file (paired with a single ``pred`` file
            whatever its name).
        labels: Label convention of the plain label files: the prediction files and, for a plain
            reference folder, the reference files; one of ``LABEL_CHOICES``. ``"auto"``: the
            layout's convention when ``ref`` is a dataset, otherwise ``brats2020`` when the files
            hold only 0, 1, 2, 4 and some 4, else ``brats2023``. Defaults to "auto".
        out: Path of the CSV; the JSON goes next to it with the suffix ``.json``. Defaults to
            None: ``metrics.csv`` in the ``pred`` folder (``<case_id>_metrics.csv`` next to a
            single ``pred`` file).
        workers: Processes evaluating cases in parallel; 1 evaluates in this process. Defaults to 1.
        progress: Show a progress bar on stderr. Defaults to True.
        cases: Evaluate only these case ids (e.g. one fold's validation cases); a listed case
            without prediction or reference is reported missing. Defaults to None: every case.

    Returns:
        The metrics, their summary, the cases without counterpart and the cases that failed.

    Raises:
        EvaluationError: ``pred`` or ``ref`` is missing or holds no label files, or ``labels`` is unknown.
    """
    if labels not in LABEL_CHOICES:
        raise EvaluationError(f"unknown label convention {labels!r}; choose one of {', '.join(LABEL_CHOICES)}.")
    pred, ref = Path(pred).expanduser(), Path(ref).expanduser()
    errors: dict[str, str] = {}
    if pred.is_file():
        predictions = {_single_case_id(pred): pred}
        default_out = pred.parent / f"{next(iter(predictions))}_metrics.csv"
    elif pred.is_dir():
        predictions, duplicates = _label_files(pred)
        errors.update(duplicates)
        if not predictions and not duplicates:
            raise EvaluationError(f"the prediction folder {pred} holds no <case_id>.nii.gz label files.")
        default_out = pred / "metrics.csv"
    else:
        raise EvaluationError(f"the prediction {pred} does not exist.")
    references = _references(ref)
    errors.update(references.errors)
    if pred.is_file():
        # one prediction file: evaluate that case only, and pair two single files whatever their names
        (case_id,) = predictions
        if ref.is_file():
            references.files = {case_id: next(iter(references.files.values()))}
        references.files = {case: path for case, path in references.files.items() if case == case_id}

    if cases is not None:
        chosen_ids = {str(c) for c in cases}
        predictions = {c: p for c, p in predictions.items() if c in chosen_ids}
        references.files = {c: p for c, p in references.files.items() if c in chosen_ids}
        errors = {c: e for c, e in errors.items() if c in chosen_ids}
    missing: dict[str, str] = {}
    if cases is not None:
        for case_id in sorted(chosen_ids - predictions.keys() - references.files.keys() - errors.keys()):
            missing[case_id] = "listed in `cases` but neither predicted nor in the references"
    for case_id in sorted(predictions.keys() - references.files.keys() - errors.keys()):
        why = f" ({references.notes[case_id]})" if case_id in references.notes else ""
        missing[case_id] = f"no reference for the prediction {predictions[case_id]}{why}"
    where = pred if pred.is_dir() else pred.parent
    for case_id in sorted(references.files.keys() - predictions.keys() - errors.keys()):
        missing[case_id] = (
            f"no prediction for the reference {references.files[case_id]} (expected {where / case_id}.nii.gz)"
        )
    matched = sorted((predictions.keys() & references.files.keys()) - errors.keys())

    def job(case_id: str, pred_labels: str, ref_labels: str) -> _Job:
        return _Job(case_id, predictions[case_id], references.files[case_id], pred_labels, ref_labels)

    if references.layout is not None:
        chosen = references.layout if labels == "auto" else labels
        reason = f"{chosen} ({'the convention of the reference dataset' if labels == 'auto' else 'as given'})"
        jobs = [job(case_id, chosen, references.conventions[case_id]) for case_id in matched]
    elif labels != "auto":
        chosen, reason = labels, f"{labels} (as given)"
        jobs = [job(case_id, labels, labels) for case_id in matched]
    else:
        values: set[int] = set()
        probe = [job(case_id, "", "") for case_id in matched]
        for case_id, case_values, error in _run(_values_job, probe, workers, "Reading label values", progress):
            if error is None:
                values |= case_values
            else:
                errors[case_id] = error
        chosen = _choose_labels(values)
        shown = ", ".join(map(str, sorted(values))) or "none"
        reason = f"{chosen} (chosen from the label values found in the files: {shown})"
        jobs = [job(case_id, chosen, chosen) for case_id in matched if case_id not in errors]

    rows: list[dict[str, Any]] = []
    for case_id, case_rows, error in _run(_evaluate_job, jobs, workers, "Evaluating cases", progress):
        if error is None:
            rows.extend(case_rows)
        else:
            errors[case_id] = error
    order = {region: index for index, region in enumerate(REGIONS)}
    rows.sort(key=lambda row: (row["case_id"], order[row["region"]]))
    result = EvaluationResult(
        rows=rows,
        summary=summarise(rows),
        missing=dict(sorted(missing.items())),
        errors=dict(sorted(errors.items())),
        labels=chosen,
        labels_reason=reason,
    )
    csv_path = Path(out).expanduser() if out is not None else default_out
    result.csv_path, result.json_path = csv_path, csv_path.with_suffix(".json")
    write_csv(result.rows, result.csv_path)
    write_json(result, result.json_path)
    return result


# ------------------------------------------------------------------------------------------- writing


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write through ``write(file)`` to a hidden temporary file next to ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "w", newline="", encoding="utf-8") as file:
            write(file)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_csv(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> None:
    """One line per case and region with the columns of ``COLUMNS``; NaN is written ``nan``."""

    def write(file) -> None:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    _write_atomic(Path(path), write)


def _json_safe(value: Any) -> Any:
    # JSON has no NaN: undefined metrics become null
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_json(result: EvaluationResult, path: str | os.PathLike) -> None:
    """``{"cases": {case: {region: {metric: value}}}, "summary", "missing", "errors", "labels"}``; NaN is null."""
    cases: dict[str, dict[str, dict[str, float]]] = {}
    for row in result.rows:
        cases.setdefault(row["case_id"], {})[row["region"]] = {metric: row[metric] for metric in METRICS}
    content = _json_safe(
        {
            "cases": cases,
            "summary": result.summary,
            "missing": result.missing,
            "errors": result.errors,
            "labels": result.labels,
        }
    )
    _write_atomic(Path(path), lambda file: json.dump(content, file, indent=2, allow_nan=False))


# ---------------------------------------------------------------------------------------------- CLI


def _format(metric: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.4f}" if metric in ("dice", "sensitivity", "specificity") else f"{value:.2f}"


def print_result(result: EvaluationResult, console: Console) -> None:
    """The summary table, then the cases without counterpart and the failed cases."""
    table = Table(title=f"BraTS metrics over {len(result.case_ids)} case(s), NaNs ignored")
    for name in ("region", "metric", "mean", "median", "std"):
        table.add_column(name, justify="left" if name in ("region", "metric") else "right")
    for region in REGIONS:
        for index, metric in enumerate(METRICS):
            stats = result.summary[region][metric]
            table.add_row(
                region.upper() if index == 0 else "",
                metric,
                *(_format(metric, stats[name]) for name in ("mean", "median", "std")),
                end_section=index == len(METRICS) - 1,
            )
    console.print(table)
    for title, entries in (("without counterpart", result.missing), ("not evaluated", result.errors)):
        if entries:
            console.print(f"[bold red]{len(entries)} case(s) {title}:[/bold red]")
            for case_id, message in entries.items():
                console.print(f"- {escape(case_id)}: {escape(message)}", highlight=False)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tumorseg.evaluate``: evaluate, write the CSV and JSON, print the summary.

    Returns:
        0 when every case was evaluated, 1 when a case has no counterpart or failed, 2 when the
        inputs cannot be used at all.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tumorseg.evaluate",
        description="BraTS evaluation (Dice, HD95, sensitivity, specificity, volumes of WT, TC, ET) "
        "of predicted label maps against references.",
    )
    parser.add_argument("--pred", required=True, help="folder of <case_id>.nii.gz label maps, or one file")
    parser.add_argument("--ref", required=True, help="dataset root (BraTS 2020/2021/2023, MSD) or folder of label maps")
    parser.add_argument(
        "--labels",
        choices=LABEL_CHOICES,
        default="auto",
        help="label convention of the plain label files (default: auto, from the dataset or the values found)",
    )
    parser.add_argument(
        "--out", help="CSV to write (default: metrics.csv in the pred folder); the JSON goes next to it"
    )
    parser.add_argument(
        "--cases",
        help="evaluate only these cases: a run's split.json (its validation cases), a JSON list or a text file of ids",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=min(8, os.cpu_count() or 1),
        help="parallel processes (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True)
    try:
        cases = select_cases(args.cases) if args.cases else None
        result = evaluate_folder(
            args.pred, args.ref, labels=args.labels, out=args.out, workers=args.workers, cases=cases
        )
    except (EvaluationError, ValueError) as error:
        Console(stderr=True, soft_wrap=True).print(f"error: {error}", markup=False, highlight=False)
        return 2
    console.print(f"labels: {escape(result.labels_reason)}", highlight=False)
    print_result(result, console)
    console.print(f"wrote {escape(str(result.csv_path))} and {escape(str(result.json_path))}", highlight=False)
    return 0 if result.ok else 1


__all__ = [
    "COLUMNS",
    "HD95_EMPTY",
    "METRICS",
    "EvaluationError",
    "EvaluationResult",
    "evaluate_folder",
    "hd95",
    "main",
    "region_metrics",
    "summarise",
    "surface_distances",
]

if __name__ == "__main__":
    raise SystemExit(main())

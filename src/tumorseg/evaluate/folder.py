"""Evaluation of a folder of predicted label maps against references (``evaluate_folder``).

It pairs the prediction files with the references by case id (a dataset root that
``tumorseg.data.layouts.discover`` recognises, a folder of ``<case_id>.nii.gz`` label maps, or one
file), chooses the label convention, evaluates each case with ``region_metrics`` (see
``tumorseg.evaluate.metrics``; regions as ``tumorseg.labels`` defines them) or, for the BraTS
2023 lesion-wise metrics, ``lesionwise_case`` (``tumorseg.evaluate.lesionwise``), in worker processes
when asked, and writes the CSV and the JSON of ``tumorseg.evaluate.reports``. A case that cannot be
evaluated is reported with what is wrong, and the others are still evaluated.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tumorseg.data.layouts import CONVENTION_LAYOUTS, DatasetError, discover
from tumorseg.evaluate.lesionwise import TASKS, lesionwise_case
from tumorseg.evaluate.metrics import region_metrics
from tumorseg.evaluate.reports import MODES, EvaluationResult, summarise, write_csv, write_json
from tumorseg.io import NiftiError, read_label, spacing
from tumorseg.labels import ALL_CONVENTIONS, convention_label_set, to_internal, unexpected_values

LABEL_CHOICES = ("auto", *ALL_CONVENTIONS)

_NIFTI_NAME = re.compile(r"(?P<case>[^.].*)\.nii(?:\.gz)?")
# tumorseg.predict writes these next to the label maps; they are 4D maps, not predictions
_IGNORED_SUFFIXES = ("_probabilities",)


class EvaluationError(ValueError):
    """The inputs cannot be evaluated at all (missing folder, no label files, unknown convention)."""


# ------------------------------------------------------------------------------------------- reading


def _label_values(data: np.ndarray) -> set[int]:
    if data.dtype.kind in "ub" or (data.size and data.min() >= 0 and data.max() < 65536):
        # far faster than np.unique's sort on a whole volume
        return {int(value) for value in np.flatnonzero(np.bincount(data.ravel(order="K").astype(np.intp, copy=False)))}
    return {int(value) for value in np.unique(data)}


def _to_internal(data: np.ndarray, convention: str, path: Path) -> np.ndarray:
    bad = unexpected_values(data, convention)
    if bad:
        # e.g. BraTS 2024's resection cavity 4 in files read as BraTS 2023's
        others = [
            c
            for c, layout in CONVENTION_LAYOUTS.items()
            if layout == convention and set(bad) <= set(ALL_CONVENTIONS[c])
        ]
        hint = f" (--labels {others[0]}?)" if others else ""
        raise NiftiError(
            path,
            f"label values {bad} are not part of the {convention} convention "
            f"(values {sorted(ALL_CONVENTIONS[convention])}); pass the right --labels{hint}, or fix the file",
        )
    return to_internal(data, convention, source=str(path))


# ------------------------------------------------------------------------------------------ per case


@dataclass(frozen=True)
class _Job:
    """One case to evaluate: small, so that it travels cheaply to a worker process."""

    case_id: str
    pred: Path
    ref: Path
    pred_labels: str
    ref_labels: str
    mode: str = "volume"
    task: str = "GLI"


def _evaluate_job(job: _Job) -> tuple[str, list[dict[str, Any]] | None, str | None]:
    """``(case_id, rows, None)``, or ``(case_id, None, error)`` listing every problem of the case."""
    problems, read = [], {}
    for role in ("pred", "ref"):
        try:
            read[role] = read_label(getattr(job, role))
        except NiftiError as error:
            problems.append(str(error))
    if len(read) == 2:
        (pred_image, pred), (ref_image, ref) = read["pred"], read["ref"]
        if pred.shape != ref.shape:
            problems.append(
                f"shape mismatch: the prediction {job.pred} has shape {pred.shape}, the reference {job.ref} "
                f"has shape {ref.shape}; predictions must lie on the reference's voxel grid"
            )
        # the lesion volumes use the prediction's voxel size, as the BraTS 2023 code does
        if job.mode == "lesionwise" and not np.allclose(spacing(pred_image), spacing(ref_image), rtol=1e-5, atol=0):
            problems.append(
                f"voxel size mismatch: the prediction {job.pred} has {spacing(pred_image)} mm, the reference "
                f"{job.ref} has {spacing(ref_image)} mm; predictions must lie on the reference's voxel grid"
            )
    internal = {}
    for role, (_, data) in read.items():
        try:
            internal[role] = _to_internal(data, getattr(job, f"{role}_labels"), getattr(job, role))
        except NiftiError as error:
            problems.append(str(error))
    labels = convention_label_set(job.pred_labels)
    if convention_label_set(job.ref_labels) is not labels:
        problems.append(
            f"the prediction is read as {job.pred_labels} ({labels.name} classes), the reference {job.ref} as "
            f"{job.ref_labels} ({convention_label_set(job.ref_labels).name} classes); they cannot be compared"
        )
    if problems:
        return job.case_id, None, "; ".join(problems)
    regions = {region: labels.region_classes[region] for region in labels.regions}
    if job.mode == "lesionwise":
        scores = lesionwise_case(internal["pred"], internal["ref"], spacing(pred_image), job.task, regions)
        return job.case_id, [{"case_id": job.case_id, "region": r, **scores[r].metrics()} for r in regions], None
    metrics = region_metrics(internal["pred"], internal["ref"], spacing(ref_image), regions)
    return job.case_id, [{"case_id": job.case_id, "region": region, **metrics[region]} for region in regions], None


def _values_job(job: _Job) -> tuple[str, set[int] | None, str | None]:
    """The label values of both files of a case, for ``--labels auto``."""
    values, problems = set(), []
    for path in (job.pred, job.ref):
        try:
            values |= _label_values(read_label(path)[1])
        except NiftiError as error:
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


def _references(ref: Path, labels: str = "auto") -> _References:
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
        # --labels brats2024 on a dataset named like BraTS 2023: its label files are 2024's too
        shared = CONVENTION_LAYOUTS.get(labels) == discovery.layout
        return _References(
            {case.case_id: case.label for case in labelled},
            {case.case_id: labels if shared else case.label_convention for case in labelled},
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
    return "brats2020" if 4 in values and values <= set(ALL_CONVENTIONS["brats2020"]) else "brats2023"


# ----------------------------------------------------------------------------------------- the whole


def evaluate_folder(
    pred: str | os.PathLike,
    ref: str | os.PathLike,
    labels: str = "auto",
    out: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = True,
    cases: Sequence[str] | None = None,
    metrics: str = "volume",
    task: str = "GLI",
) -> EvaluationResult:
    """Evaluate predicted label maps against references and write the CSV and JSON.

    Args:
        pred: A folder of ``<case_id>.nii.gz`` (or ``.nii``) label maps, or one such file. Other
            files (``.png``, ``.csv``, ``*_probabilities.nii.gz``, hidden files) are ignored.
        ref: A dataset root that ``tumorseg.data.layouts.discover`` recognises (the references are the
            cases' label files, read in the layout's convention), a folder of
            ``<case_id>.nii.gz`` label maps, or one such file (paired with a single ``pred`` file
            whatever its name).
        labels: Label convention of the plain label files: the prediction files and, for a plain
            reference folder, the reference files; one of ``LABEL_CHOICES``. ``"auto"``: the
            layout's convention when ``ref`` is a dataset, otherwise ``brats2020`` when the files
            hold only 0, 1, 2, 4 and some 4, else ``brats2023``. A convention that shares a
            dataset's file names (``brats2024`` for a ``brats2023``-named one) is the references'
            too. Its label set (``tumorseg.labels``) sets the regions scored: WT, TC, ET, or for
            ``brats2024`` ET, NETC, SNFH, RC, TC, WT. Defaults to "auto".
        out: Path of the CSV; the JSON goes next to it with the suffix ``.json``. Defaults to
            None: ``metrics.csv`` in the ``pred`` folder (``<case_id>_metrics.csv`` next to a
            single ``pred`` file), ``metrics_lesionwise.csv`` (``<case_id>_metrics_lesionwise.csv``)
            for the lesion-wise metrics.
        workers: Processes evaluating cases in parallel; 1 evaluates in this process. Defaults to 1.
        progress: Show a progress bar on stderr. Defaults to True.
        cases: Evaluate only these case ids (e.g. one fold's validation cases); a listed case
            without prediction or reference is reported missing. Defaults to None: every case.
        metrics: ``"volume"``: Dice, HD95, sensitivity, specificity and volumes of each region
            (``tumorseg.evaluate.metrics``); ``"lesionwise"``: the BraTS 2023 lesion-wise Dice, HD95
            and lesion counts (``tumorseg.evaluate.lesionwise``), with the prediction's voxel size,
            which must agree with the reference's. Defaults to "volume".
        task: The BraTS task whose lesion definition the lesion-wise metrics use, a key of
            ``tumorseg.evaluate.lesionwise.TASKS``. Defaults to "GLI".

    Returns:
        The metrics, their summary, the cases without counterpart and the cases that failed.

    Raises:
        EvaluationError: ``pred`` or ``ref`` is missing or holds no label files, or ``labels``,
            ``metrics`` or ``task`` is unknown.
    """
    _check_options(labels, metrics, task)
    pred, ref = Path(pred).expanduser(), Path(ref).expanduser()
    predictions, errors, default_out = _predictions(pred, metrics)
    references = _references(ref, labels)
    errors.update(references.errors)
    if pred.is_file():  # one prediction file: that case only, two single files paired whatever their names
        (case_id,) = predictions
        files = references.files
        references.files = {case_id: next(iter(files.values()))} if ref.is_file() else _only(files, [case_id])
    if cases is not None:
        predictions, errors = _only(predictions, cases), _only(errors, cases)
        references.files = _only(references.files, cases)
    missing = _unpaired(predictions, references, errors, cases, pred if pred.is_dir() else pred.parent)
    matched = sorted((predictions.keys() & references.files.keys()) - errors.keys())
    jobs = [_Job(c, predictions[c], references.files[c], "", "", metrics, task) for c in matched]
    jobs, chosen, reason = _choose_conventions(jobs, references, labels, errors, workers, progress)
    label_set = convention_label_set(chosen)
    rows = _evaluate(jobs, errors, workers, progress, label_set.regions)
    result = EvaluationResult(
        rows=rows, summary=summarise(rows, metrics, label_set.regions), missing=dict(sorted(missing.items())),
        errors=dict(sorted(errors.items())), labels=chosen, labels_reason=reason, mode=metrics,
        task=task if metrics == "lesionwise" else "", label_set=label_set.name,
    )  # fmt: skip
    _write(result, Path(out).expanduser() if out is not None else default_out)
    return result


def _write(result: EvaluationResult, csv_path: Path) -> None:
    """The CSV and, beside it, the JSON."""
    result.csv_path, result.json_path = csv_path, csv_path.with_suffix(".json")
    write_csv(result.rows, result.csv_path, ("case_id", "region", *MODES[result.mode]))
    write_json(result, result.json_path)


def _only(found: dict, cases: Sequence[str]) -> dict:
    chosen = {str(c) for c in cases}
    return {case: value for case, value in found.items() if case in chosen}


def _evaluate(
    jobs: list[_Job], errors: dict[str, str], workers: int, progress: bool, regions: Sequence[str]
) -> list[dict[str, Any]]:
    """The metric rows of every job, by case and in the order of ``regions``; a case that fails goes
    to ``errors``."""
    rows: list[dict[str, Any]] = []
    for case_id, case_rows, error in _run(_evaluate_job, jobs, workers, "Evaluating cases", progress):
        if error is None:
            rows.extend(case_rows)
        else:
            errors[case_id] = error
    order = {region: index for index, region in enumerate(regions)}
    return sorted(rows, key=lambda row: (row["case_id"], order[row["region"]]))


def _check_options(labels: str, metrics: str, task: str) -> None:
    if labels not in LABEL_CHOICES:
        raise EvaluationError(f"unknown label convention {labels!r}; choose one of {', '.join(LABEL_CHOICES)}.")
    if metrics not in MODES:
        raise EvaluationError(f"unknown metrics {metrics!r}; choose one of {', '.join(MODES)}.")
    if task not in TASKS:
        raise EvaluationError(f"unknown BraTS task {task!r}; choose one of {', '.join(TASKS)}.")


def _predictions(pred: Path, metrics: str) -> tuple[dict[str, Path], dict[str, str], Path]:
    """The prediction files (case id -> path), the duplicates' errors, and the default CSV path (the
    lesion-wise metrics' beside the whole-volume ``metrics.csv``, not over it)."""
    suffix = "_lesionwise" if metrics == "lesionwise" else ""
    if pred.is_file():
        predictions = {_single_case_id(pred): pred}
        return predictions, {}, pred.parent / f"{next(iter(predictions))}_metrics{suffix}.csv"
    if not pred.is_dir():
        raise EvaluationError(f"the prediction {pred} does not exist.")
    predictions, duplicates = _label_files(pred)
    if not predictions and not duplicates:
        raise EvaluationError(f"the prediction folder {pred} holds no <case_id>.nii.gz label files.")
    return predictions, dict(duplicates), pred / f"metrics{suffix}.csv"


def _unpaired(
    predictions: dict[str, Path], references: _References, errors: dict[str, str], cases, where: Path
) -> dict[str, str]:
    """Case id -> why it cannot be evaluated: listed but absent, or without its counterpart."""
    missing: dict[str, str] = {}
    if cases is not None:
        listed = {str(c) for c in cases}
        for case_id in sorted(listed - predictions.keys() - references.files.keys() - errors.keys()):
            missing[case_id] = "listed in `cases` but neither predicted nor in the references"
    for case_id in sorted(predictions.keys() - references.files.keys() - errors.keys()):
        why = f" ({references.notes[case_id]})" if case_id in references.notes else ""
        missing[case_id] = f"no reference for the prediction {predictions[case_id]}{why}"
    for case_id in sorted(references.files.keys() - predictions.keys() - errors.keys()):
        missing[case_id] = (
            f"no prediction for the reference {references.files[case_id]} (expected {where / case_id}.nii.gz)"
        )
    return missing


def _choose_conventions(
    jobs: list[_Job], references: _References, labels: str, errors: dict[str, str], workers: int, progress: bool
) -> tuple[list[_Job], str, str]:
    """The jobs with the label conventions of their files, the predictions' convention and why it
    was chosen; with ``labels="auto"`` and plain files, from the label values found (read errors go
    to ``errors``)."""
    if references.layout is not None:
        chosen = references.layout if labels == "auto" else labels
        reason = f"{chosen} ({'the convention of the reference dataset' if labels == 'auto' else 'as given'})"
        return (
            [replace(j, pred_labels=chosen, ref_labels=references.conventions[j.case_id]) for j in jobs],
            chosen,
            reason,
        )
    if labels != "auto":
        return [replace(j, pred_labels=labels, ref_labels=labels) for j in jobs], labels, f"{labels} (as given)"
    values: set[int] = set()
    for case_id, case_values, error in _run(_values_job, jobs, workers, "Reading label values", progress):
        if error is None:
            values |= case_values
        else:
            errors[case_id] = error
    chosen = _choose_labels(values)
    shown = ", ".join(map(str, sorted(values))) or "none"
    reason = f"{chosen} (chosen from the label values found in the files: {shown})"
    return [replace(j, pred_labels=chosen, ref_labels=chosen) for j in jobs if j.case_id not in errors], chosen, reason

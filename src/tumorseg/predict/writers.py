"""What ``predict`` writes for each case and for the whole run, each file atomically: the label
map and the probability maps in the input's space (``tumorseg.io.write_nifti``), a PNG of three
orthogonal views, and ``summary.csv`` of the tumour volumes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from tumorseg.io import atomic_write, read_nifti, spacing, write_atomic, write_nifti
from tumorseg.labels import BRATS2023, convention_label_set, from_internal, to_internal, volumes_cm3
from tumorseg.predict.predictor import Prediction

PROBABILITIES = "probabilities"


def write_label(prediction: Prediction, convention: str, path: Path) -> Path:
    """The label map as uint8 in ``convention``'s values, with the input's affine and header."""
    case = prediction.case
    return write_nifti(from_internal(prediction.label, convention), path, case.affine, case.header)


def write_probabilities(prediction: Prediction, out_dir: Path) -> Path:
    """``<out_dir>/probabilities/<case_id>.nii.gz`` (x, y, z, channel) and ``channels.json``; a
    folder of its own, so that the segmentation folder holds one label file per case."""
    case = prediction.case
    folder = out_dir / PROBABILITIES
    maps = np.moveaxis(prediction.probabilities.numpy().astype(np.float32), 0, -1)
    path = write_nifti(maps, folder / f"{case.item.case_id}.nii.gz", case.affine, case.header)
    write_atomic(folder / "channels.json", json.dumps({"channels": list(prediction.channels)}))
    return path


def write_png(prediction: Prediction, path: Path) -> Path:
    """Three orthogonal views of the label map over the FLAIR (or the first modality)."""
    from tumorseg.plots import orthogonal_views, save_figure

    case = prediction.case
    fig = orthogonal_views(
        case.display, prediction.label, spacing=case.spacing, modality=case.display_name, title=case.item.case_id,
        colours=prediction.label_set.colours,
    )  # fmt: skip
    return save_figure(fig, path)


def write_summary(out_dir: Path, conventions: dict[str, str]) -> Path:
    """``summary.csv``: WT/TC/ET volumes in cm^3 (the regions of the conventions' label set) of the
    segmentations in ``out_dir`` of these cases (case id -> the label convention they were written in)."""
    sets = {convention_label_set(c).name: convention_label_set(c) for c in conventions.values()}
    if len(sets) > 1:
        raise ValueError(f"summary.csv: the segmentations are written in conventions of label sets {sorted(sets)}.")
    labels = sets.popitem()[1] if sets else BRATS2023
    rows = []
    for case_id, convention in conventions.items():
        path = out_dir / f"{case_id}.nii.gz"
        if not path.exists():
            continue
        image, data = read_nifti(path)
        internal = to_internal(np.asarray(data), convention, source=str(path))
        rows.append({"case_id": case_id, **volumes_cm3(internal, spacing(image), convention_label_set(convention))})
    path = out_dir / "summary.csv"
    with atomic_write(path) as f:
        writer = csv.DictWriter(f, fieldnames=["case_id", *(f"{r}_cm3" for r in labels.regions)])
        writer.writeheader()
        writer.writerows(rows)
    return path

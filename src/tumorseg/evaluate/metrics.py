"""BraTS metrics of one case: Dice, HD95, sensitivity, specificity and volumes of the regions.

The conventions for empty masks are BraTS's: a region absent from both prediction and reference
has Dice 1 and HD95 0, a region present in only one of them Dice 0 and HD95 ``HD95_EMPTY``
(373.13 mm, the value of the BraTS evaluation platform). The HD95 is medpy's ``hd95``: the 95th
percentile of the surface distances of both directions pooled, computed inside the bounding box of
the two masks so that a whole 240x240x155 volume takes a few tens of milliseconds.

``dice_from_counts`` is the one Dice of the package: ``region_metrics`` here and the training
metrics (``tumorseg.training.metrics``) both compute it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from tumorseg.arrays import bounding_box
from tumorseg.labels import REGION_CLASSES

HD95_EMPTY = 373.13
"""HD95 in mm of a region present in exactly one of prediction and reference (BraTS convention)."""

METRICS = ("dice", "hd95", "sensitivity", "specificity", "pred_volume_cm3", "ref_volume_cm3")

# The two masks are zero outside their joint bounding box, so one voxel of margin keeps erosion at
# the box's edge as in the full volume, and every surface voxel (all EDT sources) lies inside it.
_CROP_MARGIN = 1


def dice_from_counts(intersection: Any, pred_sum: Any, ref_sum: Any) -> Any:
    """Dice 2I / (P + R) from voxel counts, with the BraTS rule for empty masks.

    A region empty in both prediction and reference scores 1; one empty in exactly one of them
    scores 0 (its intersection is 0). The same arithmetic serves every kind of count, elementwise.

    Args:
        intersection: Voxels in both masks: a Python number, a numpy array or a torch tensor.
        pred_sum: Voxels in the predicted mask, of the same kind.
        ref_sum: Voxels in the reference mask, of the same kind.

    Returns:
        A float for numbers, float64 for numpy integer arrays; for torch tensors the floating dtype
        of the counts (pass float64 counts for a float64 Dice: integer tensors would give torch's
        default float dtype).
    """
    empty = (pred_sum + ref_sum) == 0
    # adding ``empty`` turns 0 / 0 into 0 / 1, then the score of two empty masks into 1
    return 2.0 * intersection / (pred_sum + ref_sum + empty) + empty


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
        box = bounding_box(pred | ref, _CROP_MARGIN)
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
    pred_label: np.ndarray,
    ref_label: np.ndarray,
    spacing: Sequence[float],
    regions: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-region metrics of a predicted internal label map against the reference.

    Args:
        pred_label: Predicted label map of internal classes 0-3 (see ``tumorseg.labels``).
        ref_label: Reference label map of the same shape.
        spacing: Voxel size in mm along each axis (from the reference header).
        regions: Region -> its internal classes, in report order; the maps may hold the classes
            0 to the largest of them. Defaults to ``REGION_CLASSES`` (WT, TC, ET of BraTS 2023);
            ``LabelSet.region_classes`` of ``tumorseg.labels.BRATS2024`` scores BraTS 2024's six.

    Returns:
        ``{region: {metric: value}}`` for the regions of ``regions`` and the metrics of
        ``METRICS``: ``dice`` (1 when the region is empty in both, 0 when in exactly one),
        ``hd95`` in mm (see ``hd95``), ``sensitivity`` TP / (TP + FN) (NaN when the reference
        region is empty), ``specificity`` TN / (TN + FP) (NaN when the reference region fills the
        volume), ``pred_volume_cm3`` and ``ref_volume_cm3``.

    Raises:
        ValueError: The shapes differ, the spacing does not fit, or a map holds values outside 0-3
            (outside the classes of ``regions``).
    """
    regions = REGION_CLASSES if regions is None else regions
    n_classes = max(cls for classes in regions.values() for cls in classes) + 1
    pred_label, ref_label = np.asarray(pred_label), np.asarray(ref_label)
    if pred_label.shape != ref_label.shape:
        raise ValueError(
            f"pred and ref label maps must have the same shape, got {pred_label.shape} and {ref_label.shape}."
        )
    spacing = _check_spacing(spacing, ref_label.ndim)
    for name, label in (("pred", pred_label), ("ref", ref_label)):
        if label.size and (label.min() < 0 or label.max() >= n_classes):
            raise ValueError(f"{name} must hold internal classes 0..{n_classes - 1}, got {label.min()}..{label.max()}.")
    voxel_mm3 = float(np.prod(spacing))
    n_voxels = ref_label.size
    # Every region lies inside the box of the tumour voxels of both maps; outside it only adds true
    # negatives. Cropping once makes a whole BraTS volume cost what its tumours cost.
    tumour = (pred_label != 0) | (ref_label != 0)
    box = bounding_box(tumour, 0) if tumour.any() else (slice(0, 0),) * tumour.ndim
    pred_label, ref_label = pred_label[box], ref_label[box]
    metrics = {}
    for region, classes in regions.items():
        lookup = np.zeros(n_classes, dtype=bool)
        lookup[list(classes)] = True
        pred, ref = lookup[pred_label], lookup[ref_label]
        tp = int(np.count_nonzero(pred & ref))
        n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
        fp, fn = n_pred - tp, n_ref - tp
        tn = n_voxels - tp - fp - fn
        metrics[region] = {
            "dice": dice_from_counts(tp, n_pred, n_ref),
            "hd95": hd95(pred, ref, spacing),
            "sensitivity": tp / n_ref if n_ref else math.nan,
            "specificity": tn / (tn + fp) if tn + fp else math.nan,
            "pred_volume_cm3": n_pred * voxel_mm3 / 1000.0,
            "ref_volume_cm3": n_ref * voxel_mm3 / 1000.0,
        }
    return metrics


__all__ = ["HD95_EMPTY", "METRICS", "dice_from_counts", "hd95", "region_metrics", "surface_distances"]

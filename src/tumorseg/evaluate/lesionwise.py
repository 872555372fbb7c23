"""BraTS 2023+ lesion-wise Dice and HD95 of one case, as the challenge's 2023 code computes them.

The rules are those of ``brats_2023_metrics/surface_distance/brats_metrics.py`` in
rachitsaluja/BraTS-2023-Metrics (the code of the BraTS 2023 GLI, SSA, MEN, PED and MET
rankings), written anew:

* each region (WT, TC, ET, or whatever ``tumorseg.labels`` defines) is a binary mask;
* the reference lesions: the reference mask is dilated (``generate_binary_structure(3, 2)``, the
  18-neighbourhood, ``TASKS[task].dilation`` iterations, in voxels whatever the spacing); lesion
  k is the reference voxels inside the k-th 26-connected component of the dilated mask, so that
  nearby reference components count as one lesion;
* the predicted components are the 26-connected components of the predicted mask; one that
  touches lesion k's dilated mask (same structure and iterations) is matched to lesion k (it may
  be matched to several lesions), and a component matched to no lesion is a false positive;
* lesion k's Dice and HD95 compare it with the union of its matched components, whole; a lesion
  without any has Dice 0 and HD95 ``HD95_PENALTY`` (374 mm);
* lesions of ``TASKS[task].min_volume_mm3`` or less are left out of the score and of the TP/FN
  counts, but the components they match are not false positives;
* lesion Dice = sum(Dice of kept lesions) / (kept lesions + FP), lesion HD95 =
  (sum(HD95 of kept lesions) + 374 * FP) / (kept lesions + FP); 0 / 0 gives Dice 1 and HD95 0.

The HD95 is the 2023 code's: DeepMind's ``surface_distance.compute_robust_hausdorff(., 95)``, the
area-weighted 95th percentile of the distances from surface elements on the dual grid, each
direction apart, then the larger of the two (``robust_hausdorff``, built on MONAI's subvoxel
edges). It is not medpy's HD95 of the whole-volume metrics (``tumorseg.evaluate.metrics.hd95``:
surface voxels, both directions pooled, interpolated percentile), so the two disagree on the same
masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import binary_dilation, distance_transform_edt, find_objects, generate_binary_structure, label

from tumorseg.arrays import bounding_box
from tumorseg.evaluate.metrics import _check_masks, _check_spacing
from tumorseg.labels import REGION_CLASSES

HD95_PENALTY = 374.0
"""HD95 in mm of a missed lesion and of a false-positive component (the 2023 code's value for inf)."""

LESIONWISE_METRICS = ("lesion_dice", "lesion_hd95", "num_tp", "num_fp", "num_fn")


@dataclass(frozen=True)
class TaskParameters:
    """The lesion definition of one BraTS task.

    Attributes:
        dilation: Iterations of the 18-neighbourhood binary dilation that merges nearby reference
            components and decides which predicted components a lesion matches.
        min_volume_mm3: Lesions of this volume or less are not scored.
    """

    dilation: int
    min_volume_mm3: float


TASKS = {
    "GLI": TaskParameters(dilation=3, min_volume_mm3=50.0),
    "MEN": TaskParameters(dilation=1, min_volume_mm3=50.0),
    "MET": TaskParameters(dilation=1, min_volume_mm3=2.0),
    "PED": TaskParameters(dilation=3, min_volume_mm3=50.0),
    "SSA": TaskParameters(dilation=3, min_volume_mm3=50.0),
}
"""BraTS 2023 task -> its parameters (``get_challenge_parameters`` of the 2023 code)."""

# 26-connected components; the dilation's structure is the 18-neighbourhood, as in the 2023 code
_COMPONENTS = generate_binary_structure(3, 3)
_DILATION = generate_binary_structure(3, 2)


@dataclass(frozen=True)
class Lesion:
    """One reference lesion of a region and how the prediction scores on it.

    Attributes:
        volume_mm3: Its volume.
        kept: True when the volume is above the task's threshold, so that the lesion is scored.
        matched: How many predicted components touch its dilated mask.
        dice: Dice of the lesion and its matched components (0 when none).
        hd95: ``robust_hausdorff`` of the same two masks in mm, ``HD95_PENALTY`` when nothing matched.
    """

    volume_mm3: float
    kept: bool
    matched: int
    dice: float
    hd95: float


@dataclass(frozen=True)
class LesionwiseScore:
    """The lesion-wise result of one region of one case.

    Attributes:
        lesions: The reference lesions, kept or not, in the order of the dilated components.
        num_fp: Predicted components matched to no lesion.
    """

    lesions: tuple[Lesion, ...]
    num_fp: int

    @property
    def num_tp(self) -> int:
        """Kept lesions with at least one matched component."""
        return sum(lesion.kept and lesion.matched > 0 for lesion in self.lesions)

    @property
    def num_fn(self) -> int:
        """Kept lesions without any matched component."""
        return sum(lesion.kept and lesion.matched == 0 for lesion in self.lesions)

    def _mean(self, values: list[float], fp_value: float, empty: float) -> float:
        count = len(values) + self.num_fp
        return (math.fsum(values) + fp_value * self.num_fp) / count if count else empty

    @property
    def lesion_dice(self) -> float:
        """Sum of the kept lesions' Dice over (kept lesions + FP); 1 when both are 0."""
        return self._mean([lesion.dice for lesion in self.lesions if lesion.kept], 0.0, 1.0)

    @property
    def lesion_hd95(self) -> float:
        """(Sum of the kept lesions' HD95 + 374 per FP) over (kept lesions + FP); 0 when both are 0."""
        return self._mean([lesion.hd95 for lesion in self.lesions if lesion.kept], HD95_PENALTY, 0.0)

    def metrics(self) -> dict[str, Any]:
        """``{metric: value}`` for the metrics of ``LESIONWISE_METRICS``."""
        return {metric: getattr(self, metric) for metric in LESIONWISE_METRICS}


def _task(task: str) -> TaskParameters:
    if task not in TASKS:
        raise ValueError(f"unknown BraTS task {task!r}; choose one of {', '.join(TASKS)}.")
    return TASKS[task]


def robust_hausdorff(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], percent: float = 95.0) -> float:
    """DeepMind's robust Hausdorff distance (``surface_distance.compute_robust_hausdorff``), in mm.

    The surface elements lie on the dual grid (voxel corners), coded by their 2x2x2 neighbourhood,
    with the areas of DeepMind's lookup table (MONAI's ``get_mask_edges`` with a ``spacing``).
    For each direction, the distance from each surface element of one mask to the nearest of the
    other is sorted and the first whose cumulative share of the surface area reaches ``percent``
    is taken; the result is the larger of the two directions. This is not medpy's HD95 (surface
    voxels, both directions pooled, ``np.percentile``) that ``tumorseg.evaluate.metrics.hd95``
    computes.

    Args:
        pred: Predicted mask (2D or 3D); non-zero is foreground.
        ref: Reference mask of the same shape.
        spacing: Voxel size in mm along each axis.
        percent: The percentile, 0-100. Defaults to 95.

    Returns:
        The distance in mm; inf when either mask is empty (as DeepMind's).

    Raises:
        ValueError: The shapes differ, the masks are not 2D or 3D, or the spacing does not fit.
    """
    # MONAI loads torch: imported here so that the whole-volume evaluation stays without it
    from monai.metrics.utils import get_mask_edges

    pred, ref = _check_masks(pred, ref)
    if pred.ndim not in (2, 3):
        raise ValueError(f"robust_hausdorff takes 2D or 3D masks, got shape {pred.shape}.")
    spacing = _check_spacing(spacing, pred.ndim)
    if not pred.any() or not ref.any():
        return math.inf
    edges_pred, edges_ref, areas_pred, areas_ref = get_mask_edges(pred, ref, crop=True, spacing=spacing)

    def directed(edges_from: np.ndarray, areas_from: np.ndarray, edges_to: np.ndarray) -> float:
        distances = distance_transform_edt(~edges_to, sampling=spacing)[edges_from]
        order = np.argsort(distances, kind="stable")
        distances, areas = distances[order], np.asarray(areas_from, dtype=np.float64)[edges_from][order]
        share = np.cumsum(areas) / np.sum(areas)
        index = int(np.searchsorted(share, percent / 100.0))
        return float(distances[min(index, distances.size - 1)])

    return max(directed(edges_ref, areas_ref, edges_pred), directed(edges_pred, areas_pred, edges_ref))


def lesionwise_region(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float], task: str = "GLI"
) -> LesionwiseScore:
    """Lesion-wise Dice and HD95 of one region's masks (the rules in this module's docstring).

    Args:
        pred_mask: Predicted 3D mask; non-zero is foreground.
        ref_mask: Reference mask of the same shape.
        spacing: Voxel size in mm along each axis (the 2023 code takes the prediction file's).
        task: BraTS task, a key of ``TASKS``. Defaults to "GLI".

    Returns:
        The lesions, with their volume, matches, Dice and HD95, and the false-positive count;
        ``lesion_dice``, ``lesion_hd95``, ``num_tp``, ``num_fn`` derive from them.

    Raises:
        ValueError: Unknown task, shapes that differ, masks that are not 3D, or a spacing that does not fit.
    """
    parameters = _task(task)
    pred, ref = _check_masks(pred_mask, ref_mask)
    if pred.ndim != 3:
        raise ValueError(f"lesion-wise metrics take 3D masks, got shape {pred.shape}.")
    spacing = _check_spacing(spacing, 3)
    if not pred.any() and not ref.any():
        return LesionwiseScore(lesions=(), num_fp=0)
    # Outside the masks' box grown by the dilation nothing changes; the box is clipped to the
    # array, where the dilation stops too (the reference's box below alike).
    box = bounding_box(pred | ref, parameters.dilation)
    pred, ref = pred[box], ref[box]

    components, n_components = label(pred, structure=_COMPONENTS)
    dilated, n_lesions = np.zeros(components.shape, dtype=components.dtype), 0
    if ref.any():  # dilated in the reference's own box: the joint one spans every stray false positive
        near = bounding_box(ref, parameters.dilation)
        dilated[near], n_lesions = label(
            binary_dilation(ref[near], structure=_DILATION, iterations=parameters.dilation), structure=_COMPONENTS
        )
    # Dilation distributes over union, and lesion k's own dilation is connected and inside the
    # dilated reference: it is exactly dilated component k. Matching lesion k is touching it.
    touching = (dilated > 0) & (components > 0)
    pairs = np.unique(dilated[touching].astype(np.int64) * (n_components + 1) + components[touching])
    pair_lesions, pair_components = np.divmod(pairs, n_components + 1)
    num_fp = n_components - np.unique(pair_components).size

    lesions_map = np.where(ref, dilated, 0)
    lesion_voxels = np.bincount(lesions_map.ravel(), minlength=n_lesions + 1)
    # every predicted voxel on lesion k belongs to a component matched to it
    lesion_hits = np.bincount(lesions_map[pred], minlength=n_lesions + 1)
    component_voxels = np.bincount(components.ravel(), minlength=n_components + 1)
    lesion_boxes, component_boxes = find_objects(lesions_map, n_lesions), find_objects(components, n_components)
    sx, sy, sz = spacing
    lesions = []
    for k in range(1, n_lesions + 1):
        matched = pair_components[pair_lesions == k]
        # the 2023 code's product, in its order
        volume = int(lesion_voxels[k]) * sx * sy * sz
        if matched.size:
            predicted = int(component_voxels[matched].sum())
            dice = 2.0 * int(lesion_hits[k]) / (int(lesion_voxels[k]) + predicted)
            union = _union_box([lesion_boxes[k - 1], *(component_boxes[j - 1] for j in matched)])
            hd95 = robust_hausdorff(np.isin(components[union], matched), lesions_map[union] == k, spacing)
        else:
            dice, hd95 = 0.0, HD95_PENALTY
        lesions.append(
            Lesion(
                volume_mm3=volume,
                kept=volume > parameters.min_volume_mm3,
                matched=int(matched.size),
                dice=dice,
                hd95=HD95_PENALTY if math.isinf(hd95) else hd95,
            )
        )
    return LesionwiseScore(lesions=tuple(lesions), num_fp=int(num_fp))


def _union_box(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(s[a].start for s in boxes), max(s[a].stop for s in boxes)) for a in range(len(boxes[0])))


def lesionwise_case(
    pred_label: np.ndarray,
    ref_label: np.ndarray,
    spacing: Sequence[float],
    task: str = "GLI",
    regions: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, LesionwiseScore]:
    """Lesion-wise scores of every region of a predicted label map against the reference.

    Args:
        pred_label: Predicted label map (internal classes, see ``tumorseg.labels``).
        ref_label: Reference label map of the same shape.
        spacing: Voxel size in mm along each axis.
        task: BraTS task, a key of ``TASKS``. Defaults to "GLI".
        regions: Region name -> the label values it is made of. Defaults to None:
            ``tumorseg.labels.REGION_CLASSES``.

    Returns:
        ``{region: LesionwiseScore}`` in the order of ``regions``.

    Raises:
        ValueError: Unknown task, shapes that differ, maps that are not 3D, or a spacing that does not fit.
    """
    parameters = _task(task)
    regions = REGION_CLASSES if regions is None else regions
    pred_label, ref_label = np.asarray(pred_label), np.asarray(ref_label)
    if pred_label.shape != ref_label.shape:
        raise ValueError(
            f"pred and ref label maps must have the same shape, got {pred_label.shape} and {ref_label.shape}."
        )
    # One crop to the tumour (plus the dilation's reach) for all regions: background costs nothing
    tumour = (pred_label != 0) | (ref_label != 0)
    if tumour.any():
        box = bounding_box(tumour, parameters.dilation)
        pred_label, ref_label = pred_label[box], ref_label[box]
    return {
        region: lesionwise_region(np.isin(pred_label, classes), np.isin(ref_label, classes), spacing, task)
        for region, classes in regions.items()
    }


__all__ = [
    "HD95_PENALTY",
    "LESIONWISE_METRICS",
    "TASKS",
    "Lesion",
    "LesionwiseScore",
    "TaskParameters",
    "lesionwise_case",
    "lesionwise_region",
    "robust_hausdorff",
]

"""What each label and region means: the one place that says so.

Inside tumorseg a label map holds 0 background, 1 necrotic/non-enhancing tumour core (NCR),
2 peritumoural edema (ED), 3 enhancing tumour (ET): the BraTS 2023 numbering, and the 4 classes
of the paper's softmax setup (BraTS 2020's label 4 becomes class 3). The evaluated regions are
whole tumour WT = {1, 2, 3}, tumour core TC = {1, 3} and enhancing tumour ET = {3}.

Sections:

* classes and regions: ``CLASSES``, ``REGIONS``, ``REGION_CLASSES``, the painting order
  ``REGION_PAINTING``, display names and colours;
* conventions of the releases: ``CONVENTIONS``, ``to_internal``, ``from_internal``;
* masks: ``to_regions``, ``to_classes`` and their inverse ``paint_regions``, for numpy arrays
  and torch tensors alike;
* probabilities and post-processing: ``region_probabilities``, ``postprocess`` (small ET becomes
  NCR), ``volumes_cm3``.

Only numpy is imported here; the functions that take torch tensors use torch's own methods, so
that the data checks and the evaluation do not load torch.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------------- classes and regions

MODALITIES = ("flair", "t1", "t1ce", "t2")
CLASSES = ("background", "ncr", "ed", "et")
REGIONS = ("wt", "tc", "et")
REGION_CLASSES = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}
TUMOUR_CLASSES = (1, 2, 3)
"""The internal classes that are tumour, in ``CLASSES`` order (NCR, ED, ET)."""

REGION_PAINTING = (("wt", 2), ("tc", 1), ("et", 3))
"""Region -> the class its voxels get, in painting order (nnU-Net's ``regions_class_order``).

Painted from the outside in, a voxel ends up with the class of the innermost region it belongs
to: WT alone is ED, TC without ET is NCR, ET is ET. Masks that are not nested (sigmoid outputs
need not be) still give one label: the last region painted wins.
"""

MODALITY_NAMES = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}
CLASS_NAMES = {"background": "background", "ncr": "NCR", "ed": "ED", "et": "ET"}
REGION_NAMES = {"wt": "WT", "tc": "TC", "et": "ET"}

CLASS_COLOURS = {1: ("NCR", (0.9, 0.1, 0.1)), 2: ("ED", (0.1, 0.8, 0.2)), 3: ("ET", (1.0, 0.85, 0.0))}
"""Internal tumour class -> (legend name, RGB in 0-1): the overlays of every figure."""

# ------------------------------------------------------------------------------------------ conventions

# source label value -> internal class, per convention
CONVENTIONS: dict[str, dict[int, int]] = {
    "brats2020": {0: 0, 1: 1, 2: 2, 4: 3},
    "brats2021": {0: 0, 1: 1, 2: 2, 4: 3},
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 3},
    # MSD Task01_BrainTumour: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour
    "msd": {0: 0, 1: 2, 2: 1, 3: 3},
}


def _check_convention(convention: str) -> dict[int, int]:
    if convention not in CONVENTIONS:
        raise ValueError(f"Unknown label convention {convention!r}; choose one of {sorted(CONVENTIONS)}.")
    return CONVENTIONS[convention]


def unexpected_values(label: np.ndarray, convention: str) -> list[int]:
    """Label values that the convention does not define, sorted."""
    allowed = set(_check_convention(convention))
    return sorted(int(v) for v in np.unique(label) if int(v) not in allowed)


def to_internal(label: np.ndarray, convention: str, source: str = "label") -> np.ndarray:
    """Map a label map of ``convention`` to the internal classes 0-3 (uint8).

    Raises ValueError naming ``source`` when the map holds values the convention does not define.
    """
    mapping = _check_convention(convention)
    bad = unexpected_values(label, convention)
    if bad:
        raise ValueError(
            f"{source}: label values {bad} are not part of the {convention} convention "
            f"(expected {sorted(mapping)}); is this the right dataset layout?"
        )
    lut = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[np.asarray(label).astype(np.int64, copy=False)]


def from_internal(label: np.ndarray, convention: str) -> np.ndarray:
    """Map internal classes 0-3 back to the values of ``convention`` (uint8)."""
    mapping = _check_convention(convention)
    lut = np.zeros(len(CLASSES), dtype=np.uint8)
    for src, dst in mapping.items():
        lut[dst] = src
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() >= len(CLASSES)):
        raise ValueError(f"internal labels must lie in 0..{len(CLASSES) - 1}, got {label.min()}..{label.max()}.")
    return lut[label.astype(np.int64, copy=False)]


# ------------------------------------------------------------------------------------------------ masks


def _backend(array: Any) -> Any:
    """The module whose functions handle ``array``: torch for a tensor (then already loaded), else numpy."""
    if type(array).__module__.split(".")[0] == "torch":
        import torch

        return torch
    return np


def _masks(label: Any, groups: Sequence[Sequence[int]], axis: int) -> Any:
    backend = _backend(label)
    if backend is np:
        label = np.asarray(label)
    masks = [functools.reduce(operator.or_, (label == cls for cls in classes)) for classes in groups]
    return backend.stack(masks, axis)


def to_regions(label: np.ndarray | torch.Tensor, axis: int = 0) -> np.ndarray | torch.Tensor:
    """Internal label map -> boolean region masks in ``REGIONS`` order, stacked along ``axis``.

    Args:
        label: Internal label map: a numpy array (or anything ``np.asarray`` takes) or a torch tensor.
        axis: Where the region axis goes: 0 for a single map (3, ...), 1 for a batch (B, 3, ...).
            Defaults to 0.

    Returns:
        Boolean masks of the same kind as ``label`` (a torch tensor stays on its device).
    """
    return _masks(label, [REGION_CLASSES[region] for region in REGIONS], axis)


def to_classes(label: np.ndarray | torch.Tensor, axis: int = 0) -> np.ndarray | torch.Tensor:
    """Internal label map -> boolean masks of the tumour classes NCR, ED, ET, stacked along ``axis``
    (see ``to_regions``)."""
    return _masks(label, [(cls,) for cls in TUMOUR_CLASSES], axis)


def paint_regions(masks: np.ndarray | torch.Tensor, axis: int = 0) -> np.ndarray | torch.Tensor:
    """Region masks in ``REGIONS`` order along ``axis`` -> internal label map (uint8).

    The regions are painted in ``REGION_PAINTING`` order, from the outside in, as nnU-Net's
    region-based BraTS models convert them; ``paint_regions(to_regions(label))`` gives ``label``
    back.

    Args:
        masks: Boolean masks, a numpy array or a torch tensor, with ``len(REGIONS)`` entries along ``axis``.
        axis: The region axis. Defaults to 0.

    Returns:
        The label map, without the region axis, of the same kind (and device) as ``masks``.
    """
    backend = _backend(masks)
    masks = backend.moveaxis(masks, axis, 0)
    if masks.shape[0] != len(REGIONS):
        raise ValueError(f"expected {len(REGIONS)} region masks along axis {axis}, got shape {tuple(masks.shape)}.")
    label = backend.zeros_like(masks[0], dtype=backend.uint8)
    for region, cls in REGION_PAINTING:
        label[masks[REGIONS.index(region)]] = cls
    return label


# ------------------------------------------------------------------------ probabilities and volumes


def region_probabilities(probs: torch.Tensor, scheme: str) -> torch.Tensor:
    """Probabilities (C, ...) of ``scheme`` -> WT/TC/ET probabilities (3, ...).

    ``"regions"`` probabilities are already those of the regions; the four ``"softmax4"`` class
    probabilities of a region's classes add up to the region's.
    """
    if scheme == "regions":
        return probs
    sums = [functools.reduce(operator.add, (probs[cls] for cls in REGION_CLASSES[region])) for region in REGIONS]
    return _backend(probs).stack(sums)


def postprocess(label: np.ndarray, et_min_voxels: int) -> tuple[np.ndarray, bool]:
    """Relabel all enhancing tumour as necrosis (NCR) when there is less of it than ``et_min_voxels``.

    The BraTS 2020 winner's rule: small ET predictions are mostly false positives, and an empty ET
    scores Dice 1 where the reference has none. TC and WT do not change (ET and NCR are both TC).

    Returns:
        The label map (a copy when changed) and whether ET was relabelled.
    """
    et = label == 3
    count = int(et.sum())
    if et_min_voxels > 0 and 0 < count < et_min_voxels:
        label = label.copy()
        label[et] = 1
        return label, True
    return label, False


def volumes_cm3(label: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """``{"wt_cm3", "tc_cm3", "et_cm3"}``: the region volumes of an internal label map with voxels of ``spacing`` mm."""
    voxel = float(np.prod(spacing)) / 1000.0
    regions = to_regions(label)
    return {f"{r}_cm3": float(regions[i].sum()) * voxel for i, r in enumerate(REGIONS)}

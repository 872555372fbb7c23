"""Label conventions of the BraTS releases and MSD Task01, and the one convention used inside.

Inside tumorseg a label map holds 0 background, 1 necrotic/non-enhancing tumour core (NCR),
2 peritumoural edema (ED), 3 enhancing tumour (ET): the BraTS 2023 numbering, and the 4 classes
of the paper's softmax setup (BraTS 2020's label 4 becomes class 3). The evaluated regions are
whole tumour WT = {1, 2, 3}, tumour core TC = {1, 3} and enhancing tumour ET = {3}.
"""

from __future__ import annotations

import numpy as np

MODALITIES = ("flair", "t1", "t1ce", "t2")
CLASSES = ("background", "ncr", "ed", "et")
REGIONS = ("wt", "tc", "et")
REGION_CLASSES = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}

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


def to_regions(label: np.ndarray) -> np.ndarray:
    """Internal label map (...,) -> boolean region masks (3, ...) in ``REGIONS`` order."""
    label = np.asarray(label)
    return np.stack([np.isin(label, REGION_CLASSES[r]) for r in REGIONS])

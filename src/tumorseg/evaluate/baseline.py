"""The FLAIR-threshold baseline: a whole-tumour segmentation with no learning, fixed in advance.

Glioma and its edema are bright on FLAIR. Z-scoring the FLAIR over the brain, keeping what lies
more than 1.5 standard deviations above the brain's mean and keeping the largest connected
component of that (voxels joined by a face) gives a whole-tumour (WT) mask without any training, any parameter fitted to
data or any look at a label. It is the floor a learned model must beat on real scans: a model
that scores below it on a real exam has learned less about tumours than a threshold knows.
It predicts no tumour core (TC) and no enhancing tumour (ET).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import label

THRESHOLD = 1.5
"""The z-score of the FLAIR over the brain above which a voxel is tumour (fixed, never tuned)."""


def flair_threshold(flair: np.ndarray, brain: np.ndarray | None = None, threshold: float = THRESHOLD) -> np.ndarray:
    """The FLAIR-threshold baseline's whole-tumour mask of one case.

    The FLAIR is z-scored over the brain (mean and population standard deviation of its brain
    voxels), the brain voxels whose z-score exceeds ``threshold`` are kept, and of those the
    largest connected component (6-connected: ``scipy.ndimage.label``'s default). Since it
    thresholds z-scores, scaling the FLAIR's intensities does not change the mask. This is the
    definition the project fixed before measuring it on real exams (the positive FLAIR as the
    brain: preprocessed BraTS images hold small negative values at the brain's edge).

    Args:
        flair: The FLAIR, 3D, on its source grid.
        brain: The brain mask of the same shape. Defaults to None: the voxels where the FLAIR is
            positive.
        threshold: The z-score above which a voxel is kept. Defaults to 1.5.

    Returns:
        A boolean mask of the FLAIR's shape, the predicted WT; empty when no brain voxel exceeds
        the threshold (or the brain is empty or of constant FLAIR).

    Raises:
        ValueError: The FLAIR is not 3D or the brain mask has another shape.
    """
    flair = np.asarray(flair, dtype=np.float64)
    if flair.ndim != 3:
        raise ValueError(f"flair_threshold takes a 3D FLAIR, got shape {flair.shape}.")
    brain = flair > 0 if brain is None else np.asarray(brain, dtype=bool)
    if brain.shape != flair.shape:
        raise ValueError(f"the brain mask has shape {brain.shape}, the FLAIR {flair.shape}: they must be the same.")
    values = flair[brain]
    std = float(values.std()) if values.size else 0.0
    if std == 0.0:
        return np.zeros(flair.shape, dtype=bool)
    bright = np.zeros(flair.shape, dtype=bool)
    bright[brain] = (values - values.mean()) / std > threshold
    components, count = label(bright)
    if count == 0:
        return bright
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


__all__ = ["THRESHOLD", "flair_threshold"]

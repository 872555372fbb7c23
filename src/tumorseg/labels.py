"""What each label and region means: the one place that says so.

A label set says which classes a model learns and predicts, which regions are evaluated, and
which label conventions of the releases it reads and writes. There are two:

* ``BRATS2023`` (the default, ``labels=brats2023``): inside tumorseg a label map holds
  0 background, 1 necrotic/non-enhancing tumour core (NCR), 2 peritumoural edema (ED),
  3 enhancing tumour (ET): the BraTS 2023 numbering, and the 4 classes of the paper's softmax
  setup (BraTS 2020's label 4 becomes class 3). The evaluated regions are whole tumour
  WT = {1, 2, 3}, tumour core TC = {1, 3} and enhancing tumour ET = {3}. It reads BraTS
  2020/2021/2023 and MSD Task01 labels.
* ``BRATS2024`` (``labels=brats2024``): the post-treatment glioma data of BraTS 2024, whose files
  are named like 2023's but hold 1 non-enhancing tumour core (NETC), 2 surrounding non-enhancing
  FLAIR hyperintensity (SNFH), 3 ET and 4 resection cavity (RC); internal classes are these file
  values. Regions: ET = {3}, NETC = {1}, SNFH = {2}, RC = {4}, TC = {1, 3}, WT = {1, 2, 3} (the
  cavity is not tumour).

The module-level constants (``CLASSES``, ``REGIONS``, ``REGION_CLASSES``, ``REGION_PAINTING``,
``CONVENTIONS``, ...) are those of ``BRATS2023``. A convention belongs to one label set, so
``to_internal`` and ``from_internal`` know the internal numbering from the convention's name.

Sections:

* label sets: ``LabelSet``, ``BRATS2023``, ``BRATS2024``, ``label_set``;
* classes and regions of BraTS 2023: ``CLASSES``, ``REGIONS``, ``REGION_CLASSES``, the painting
  order ``REGION_PAINTING``, display names and colours;
* conventions of the releases: ``CONVENTIONS``, ``ALL_CONVENTIONS``, ``convention_label_set``,
  ``to_internal``, ``from_internal``;
* masks: ``to_regions``, ``to_channels``, ``to_classes`` and the inverse of ``to_channels``,
  ``paint_regions``, for numpy arrays and torch tensors alike;
* probabilities and post-processing: ``region_probabilities``, ``postprocess`` (small ET becomes
  NCR), ``volumes_cm3``.

Only numpy is imported here; the functions that take torch tensors use torch's own methods, so
that the data checks and the evaluation do not load torch.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

MODALITIES = ("flair", "t1", "t1ce", "t2")
MODALITY_NAMES = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}

# ------------------------------------------------------------------------------------------ label sets


@dataclass(frozen=True)
class LabelSet:
    """The classes a model learns, the regions it is scored on and the conventions it reads.

    Attributes:
        name: ``labels=`` of the configs, e.g. ``"brats2023"``.
        classes: Internal class names, indexed by class value; 0 is the background. The
            ``softmax4`` scheme has one output channel per class.
        class_names: Class -> display name.
        regions: The evaluated and reported regions, in report order.
        region_classes: Region -> the internal classes it holds, for every region of ``regions``.
        region_names: Region -> display name.
        painting: (region, class) pairs: the regions the sigmoid ``regions`` scheme trains on, one
            output channel each in this order, and the class each paints, from the outside in
            (nnU-Net's ``regions_class_order``).
        colours: Internal tumour class -> (legend name, RGB in 0-1): the overlays of every figure.
        conventions: Label convention it reads and writes -> {file value: internal class}; the
            first is written where the input has no convention of this set.
    """

    name: str
    classes: tuple[str, ...]
    class_names: dict[str, str]
    regions: tuple[str, ...]
    region_classes: dict[str, tuple[int, ...]]
    region_names: dict[str, str]
    painting: tuple[tuple[str, int], ...]
    colours: dict[int, tuple[str, tuple[float, float, float]]]
    conventions: dict[str, dict[int, int]]

    def __post_init__(self) -> None:
        n = len(self.classes)
        bad = [r for r in (*self.regions, *self.channels) if r not in self.region_classes]
        bad += [r for r, classes in self.region_classes.items() if not all(0 < c < n for c in classes)]
        bad += [r for r, c in self.painting if not 0 < c < n]
        if bad:
            raise ValueError(f"label set {self.name}: regions {bad} are undefined or name classes outside 1..{n - 1}.")
        for convention, mapping in self.conventions.items():
            if set(mapping.values()) != set(range(n)):
                raise ValueError(f"label set {self.name}: convention {convention} must map onto classes 0..{n - 1}.")

    def __hash__(self) -> int:  # the dicts are not hashable; the name is unique
        return hash(self.name)

    @property
    def channels(self) -> tuple[str, ...]:
        """The regions of the ``regions`` scheme's output channels, in painting order."""
        return tuple(region for region, _ in self.painting)

    @property
    def tumour_classes(self) -> tuple[int, ...]:
        """The internal classes other than the background, in class order."""
        return tuple(range(1, len(self.classes)))


BRATS2023 = LabelSet(
    name="brats2023",
    classes=("background", "ncr", "ed", "et"),
    class_names={"background": "background", "ncr": "NCR", "ed": "ED", "et": "ET"},
    regions=("wt", "tc", "et"),
    region_classes={"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)},
    region_names={"wt": "WT", "tc": "TC", "et": "ET"},
    # painted from the outside in, a voxel ends up with the class of the innermost region it
    # belongs to: WT alone is ED, TC without ET is NCR, ET is ET
    painting=(("wt", 2), ("tc", 1), ("et", 3)),
    colours={1: ("NCR", (0.9, 0.1, 0.1)), 2: ("ED", (0.1, 0.8, 0.2)), 3: ("ET", (1.0, 0.85, 0.0))},
    # source label value -> internal class, per convention
    conventions={
        "brats2020": {0: 0, 1: 1, 2: 2, 4: 3},
        "brats2021": {0: 0, 1: 1, 2: 2, 4: 3},
        # BraTS 2017, 2018 and 2019 (the brats2018 layout) label as 2020 does
        "brats2018": {0: 0, 1: 1, 2: 2, 4: 3},
        "brats2023": {0: 0, 1: 1, 2: 2, 3: 3},
        # MSD Task01_BrainTumour: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour
        "msd": {0: 0, 1: 2, 2: 1, 3: 3},
    },
)

BRATS2024 = LabelSet(
    name="brats2024",
    classes=("background", "netc", "snfh", "et", "rc"),
    class_names={"background": "background", "netc": "NETC", "snfh": "SNFH", "et": "ET", "rc": "RC"},
    # the order of the BraTS 2024 post-treatment evaluation
    regions=("et", "netc", "snfh", "rc", "tc", "wt"),
    # the resection cavity is not tumour: WT and TC leave it out
    region_classes={"et": (3,), "netc": (1,), "snfh": (2,), "rc": (4,), "tc": (1, 3), "wt": (1, 2, 3)},
    region_names={"et": "ET", "netc": "NETC", "snfh": "SNFH", "rc": "RC", "tc": "TC", "wt": "WT"},
    # the nested tumour regions as in 2023, then the cavity, which no tumour region holds
    painting=(("wt", 2), ("tc", 1), ("et", 3), ("rc", 4)),
    colours={
        1: ("NETC", (0.9, 0.1, 0.1)),
        2: ("SNFH", (0.1, 0.8, 0.2)),
        3: ("ET", (1.0, 0.85, 0.0)),
        4: ("RC", (0.75, 0.3, 0.95)),
    },
    conventions={"brats2024": {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}},
)

LABEL_SETS = {label_set.name: label_set for label_set in (BRATS2023, BRATS2024)}


def label_set(name: str | LabelSet) -> LabelSet:
    """The label set called ``name`` (``labels=``); a ``LabelSet`` is returned as it is.

    Raises:
        ValueError: no label set has that name.
    """
    if isinstance(name, LabelSet):
        return name
    if name not in LABEL_SETS:
        raise ValueError(f"Unknown label set labels={name!r}; choose one of {', '.join(LABEL_SETS)}.")
    return LABEL_SETS[name]


_resolve = label_set  # for the functions below, whose ``label_set`` argument hides the function


# --------------------------------------------------------------------------- classes and regions of 2023

CLASSES = BRATS2023.classes
REGIONS = BRATS2023.regions
REGION_CLASSES = BRATS2023.region_classes
TUMOUR_CLASSES = BRATS2023.tumour_classes
"""The internal classes that are tumour, in ``CLASSES`` order (NCR, ED, ET)."""

REGION_PAINTING = BRATS2023.painting
"""Region -> the class its voxels get, in painting order (nnU-Net's ``regions_class_order``).

Painted from the outside in, a voxel ends up with the class of the innermost region it belongs
to: WT alone is ED, TC without ET is NCR, ET is ET. Masks that are not nested (sigmoid outputs
need not be) still give one label: the last region painted wins.
"""

CLASS_NAMES = BRATS2023.class_names
REGION_NAMES = BRATS2023.region_names

CLASS_COLOURS = BRATS2023.colours
"""Internal tumour class -> (legend name, RGB in 0-1): the overlays of every figure."""

# ------------------------------------------------------------------------------------------ conventions

CONVENTIONS: dict[str, dict[int, int]] = BRATS2023.conventions
"""The conventions of ``BRATS2023``: source label value -> internal class."""

ALL_CONVENTIONS: dict[str, dict[int, int]] = {
    name: mapping for label_set in LABEL_SETS.values() for name, mapping in label_set.conventions.items()
}
"""Every convention tumorseg reads: source label value -> internal class of its label set."""

_CONVENTION_LABEL_SETS = {name: label_set for label_set in LABEL_SETS.values() for name in label_set.conventions}


def _check_convention(convention: str) -> dict[int, int]:
    if convention not in ALL_CONVENTIONS:
        raise ValueError(f"Unknown label convention {convention!r}; choose one of {sorted(ALL_CONVENTIONS)}.")
    return ALL_CONVENTIONS[convention]


def convention_label_set(convention: str) -> LabelSet:
    """The label set whose internal classes the label values of ``convention`` map to."""
    _check_convention(convention)
    return _CONVENTION_LABEL_SETS[convention]


def unexpected_values(label: np.ndarray, convention: str) -> list[int]:
    """Label values that the convention does not define, sorted."""
    allowed = set(_check_convention(convention))
    return sorted(int(v) for v in np.unique(label) if int(v) not in allowed)


def to_internal(label: np.ndarray, convention: str, source: str = "label") -> np.ndarray:
    """Map a label map of ``convention`` to the internal classes of its label set (uint8).

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
    """Map the internal classes of ``convention``'s label set back to its values (uint8)."""
    mapping = _check_convention(convention)
    n = len(convention_label_set(convention).classes)
    lut = np.zeros(n, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[dst] = src
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() >= n):
        raise ValueError(f"internal labels must lie in 0..{n - 1}, got {label.min()}..{label.max()}.")
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


def to_regions(
    label: np.ndarray | torch.Tensor,
    axis: int = 0,
    label_set: LabelSet | str = BRATS2023,
    regions: Sequence[str] | None = None,
) -> np.ndarray | torch.Tensor:
    """Internal label map -> boolean region masks, stacked along ``axis``.

    Args:
        label: Internal label map: a numpy array (or anything ``np.asarray`` takes) or a torch tensor.
        axis: Where the region axis goes: 0 for a single map (R, ...), 1 for a batch (B, R, ...).
            Defaults to 0.
        label_set: The label set of ``label``. Defaults to ``BRATS2023``.
        regions: The regions, in order. Defaults to the label set's evaluated regions
            (``REGIONS``: WT, TC, ET for BraTS 2023).

    Returns:
        Boolean masks of the same kind as ``label`` (a torch tensor stays on its device).
    """
    labels = _resolve(label_set)
    regions = labels.regions if regions is None else regions
    return _masks(label, [labels.region_classes[region] for region in regions], axis)


def to_channels(
    label: np.ndarray | torch.Tensor, axis: int = 0, label_set: LabelSet | str = BRATS2023
) -> np.ndarray | torch.Tensor:
    """Internal label map -> the masks of the ``regions`` scheme's channels (``LabelSet.channels``),
    the training target; ``paint_regions`` is its inverse (see ``to_regions``)."""
    labels = _resolve(label_set)
    return to_regions(label, axis, labels, labels.channels)


def to_classes(
    label: np.ndarray | torch.Tensor, axis: int = 0, label_set: LabelSet | str = BRATS2023
) -> np.ndarray | torch.Tensor:
    """Internal label map -> boolean masks of the tumour classes (NCR, ED, ET for BraTS 2023),
    stacked along ``axis`` (see ``to_regions``)."""
    return _masks(label, [(cls,) for cls in _resolve(label_set).tumour_classes], axis)


def paint_regions(
    masks: np.ndarray | torch.Tensor, axis: int = 0, label_set: LabelSet | str = BRATS2023
) -> np.ndarray | torch.Tensor:
    """Masks of the ``regions`` scheme's channels along ``axis`` -> internal label map (uint8).

    The regions are painted in the label set's painting order (``REGION_PAINTING`` for BraTS
    2023), from the outside in, as nnU-Net's region-based BraTS models convert them;
    ``paint_regions(to_channels(label))`` gives ``label`` back.

    Args:
        masks: Boolean masks, a numpy array or a torch tensor, one per channel
            (``LabelSet.channels``: WT, TC, ET for BraTS 2023) along ``axis``.
        axis: The region axis. Defaults to 0.
        label_set: The label set to paint. Defaults to ``BRATS2023``.

    Returns:
        The label map, without the region axis, of the same kind (and device) as ``masks``.
    """
    labels = _resolve(label_set)
    backend = _backend(masks)
    masks = backend.moveaxis(masks, axis, 0)
    n = len(labels.painting)
    if masks.shape[0] != n:
        raise ValueError(f"expected {n} region masks along axis {axis}, got shape {tuple(masks.shape)}.")
    label = backend.zeros_like(masks[0], dtype=backend.uint8)
    for index, (_, cls) in enumerate(labels.painting):
        label[masks[index]] = cls
    return label


# ------------------------------------------------------------------------ probabilities and volumes


def region_probabilities(probs: torch.Tensor, scheme: str, label_set: LabelSet | str = BRATS2023) -> torch.Tensor:
    """Probabilities (C, ...) of ``scheme`` -> those of the ``regions`` scheme's channels (WT/TC/ET
    for BraTS 2023).

    ``"regions"`` probabilities are already those of the regions; the ``"softmax4"`` class
    probabilities of a region's classes add up to the region's.
    """
    if scheme == "regions":
        return probs
    labels = _resolve(label_set)
    sums = [functools.reduce(operator.add, (probs[cls] for cls in labels.region_classes[r])) for r in labels.channels]
    return _backend(probs).stack(sums)


def remove_small_pieces(label: np.ndarray, min_fraction: float) -> tuple[np.ndarray, int]:
    """Set to background every piece of tumour (26-connected component of the labelled voxels)
    smaller than ``min_fraction`` of the largest piece: 1.0 keeps the largest only, 0 nothing.

    A segmentation network's far false positives are small stray pieces (bright dura, vessels);
    a second focus of a multifocal glioma is usually a sizeable fraction of the first.

    Returns:
        The label map (a copy when changed) and the number of pieces removed.
    """
    if min_fraction <= 0:
        return label, 0
    from scipy import ndimage

    pieces, count = ndimage.label(label > 0, structure=np.ones((3, 3, 3), dtype=bool))
    if count < 2:
        return label, 0
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    small = np.flatnonzero((sizes > 0) & (sizes < min_fraction * sizes.max()))
    if not len(small):
        return label, 0
    label = label.copy()
    label[np.isin(pieces, small)] = 0
    return label, len(small)


def postprocess(label: np.ndarray, et_min_voxels: int) -> tuple[np.ndarray, bool]:
    """Relabel all enhancing tumour as necrosis (NCR) when there is less of it than ``et_min_voxels``.

    The BraTS 2020 winner's rule: small ET predictions are mostly false positives, and an empty ET
    scores Dice 1 where the reference has none. TC and WT do not change (ET and NCR are both TC).
    Both label sets number ET 3 and NCR (BraTS 2024: NETC) 1.

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


def volumes_cm3(label: np.ndarray, spacing: Sequence[float], label_set: LabelSet | str = BRATS2023) -> dict[str, float]:
    """``{"<region>_cm3"}`` (``wt_cm3``, ``tc_cm3``, ``et_cm3`` for BraTS 2023): the volumes of the
    label set's regions in an internal label map with voxels of ``spacing`` mm."""
    voxel = float(np.prod(spacing)) / 1000.0
    labels = _resolve(label_set)
    masks = to_regions(label, label_set=labels)
    return {f"{r}_cm3": float(masks[i].sum()) * voxel for i, r in enumerate(labels.regions)}

"""Views of a segmentation over its scan: ``segmentation_panel`` (one slice of a case: every
modality, then the ground truth and the prediction over the first one) and ``orthogonal_views``
(axial, coronal and sagittal slices through one voxel).

Slices are shown transposed, in the radiological view of BraTS's LPS voxel order: the patient's
right on the viewer's left.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from tumorseg.labels import CLASS_COLOURS, MODALITY_NAMES

OVERLAY_ALPHA = 0.5
MODALITY_TITLES = MODALITY_NAMES
AXIS_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}


def segmentation_panel(
    image: np.ndarray,
    pred: np.ndarray,
    label: np.ndarray | None = None,
    *,
    modalities: Sequence[str] = ("flair", "t1", "t1ce", "t2"),
    axis: int = 2,
    index: int | None = None,
    title: str | None = None,
    origin: str | None = None,
    colours: Mapping[int, tuple[str, tuple[float, float, float]]] = CLASS_COLOURS,
) -> Figure:
    """One slice of a case: each modality, then the ground truth and the prediction over the first.

    Args:
        image: (C, X, Y, Z) scans, channels in ``modalities`` order (C=1 for FLAIR alone).
        pred: (X, Y, Z) predicted internal label map (0 background, 1 NCR, 2 ED, 3 ET).
        label: (X, Y, Z) ground truth in the same classes, or None to show the prediction only.
        modalities: channel names for the column titles; channels beyond them are named ``ch<i>``.
        axis: voxel axis to slice across; 2 (axial for BraTS) by default.
        index: slice to show. Defaults to the one with the largest tumour area in ``label``, or in
            ``pred`` when there is no label or it holds no tumour, or the middle slice if neither does.
        title: text before the slice description in the figure title.
        origin: ``imshow`` origin, "upper" or "lower". Defaults to the view of BraTS's LPS voxel
            order (which the readers keep): "upper" for axial slices, anterior at the top, "lower"
            for coronal and sagittal ones, superior at the top.
        colours: class -> (legend name, RGB) of the overlays: the label set's ``colours``
            (``tumorseg.labels``). Defaults to ``CLASS_COLOURS`` (NCR, ED, ET).

    Slices are shown transposed, so the first remaining voxel axis runs left to right: with LPS
    voxels the patient's right is on the viewer's left (radiological view) in every figure.
    Scans are windowed to the 1st-99th percentile of the slice's brain (non-zero) voxels.

    Returns:
        The figure, with an Agg canvas: save it with ``save_figure`` or log ``figure_to_array(fig)``.

    Raises:
        ValueError: the shapes of ``image``, ``pred`` and ``label`` do not match, or ``axis`` or
            ``index`` is out of range.
    """
    image, pred = np.asarray(image), np.asarray(pred)
    label = None if label is None else np.asarray(label)
    index = _panel_slice(image, pred, label, axis, index)
    if origin is None:
        origin = "upper" if axis == 2 else "lower"

    names = [*modalities[: image.shape[0]], *(f"ch{c}" for c in range(len(modalities), image.shape[0]))]
    scans = [np.take(image[c], index, axis=axis).T for c in range(image.shape[0])]
    windows = [window(s) for s in scans]
    overlays = [("ground truth", label)] if label is not None else []
    overlays.append(("prediction", pred))

    columns = len(scans) + len(overlays)
    fig = Figure(figsize=(2.8 * columns, 3.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, columns))
    show = {"cmap": "gray", "origin": origin, "interpolation": "nearest"}
    for ax, scan, name, (low, high) in zip(axes, scans, names, windows):
        ax.imshow(scan, vmin=low, vmax=high, **show)
        ax.set_title(MODALITY_TITLES.get(name, name))
    for ax, (name, volume) in zip(axes[len(scans) :], overlays):
        ax.imshow(scans[0], vmin=windows[0][0], vmax=windows[0][1], **show)
        ax.imshow(overlay_rgba(np.take(volume, index, axis=axis).T, colours), origin=origin, interpolation="nearest")
        ax.set_title(f"{name} on {MODALITY_TITLES.get(names[0], names[0])}")
    axes[-1].legend(handles=_legend_handles(colours), loc="lower right", fontsize=8, framealpha=0.8)
    for ax in axes:
        ax.set_axis_off()
    where = f"{AXIS_NAMES[axis]} slice {index} of {pred.shape[axis]}"
    fig.suptitle(f"{title}, {where}" if title else where)
    return fig


def _panel_slice(image: np.ndarray, pred: np.ndarray, label: np.ndarray | None, axis: int, index: int | None) -> int:
    """The slice ``segmentation_panel`` shows, once the shapes, ``axis`` and ``index`` are checked."""
    if image.ndim != 4 or pred.shape != image.shape[1:] or (label is not None and label.shape != pred.shape):
        shapes = f"image {image.shape}, pred {pred.shape}" + ("" if label is None else f", label {label.shape}")
        raise ValueError(f"Expected image (C, X, Y, Z) and pred/label (X, Y, Z) of the same size; got {shapes}.")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}.")
    if index is None:
        return _largest_tumour_slice(label if label is not None and label.any() else pred, axis)
    if not 0 <= index < pred.shape[axis]:
        raise ValueError(f"Slice index {index} is out of range for axis {axis} of size {pred.shape[axis]}.")
    return index


def _legend_handles(colours: Mapping[int, tuple[str, tuple[float, float, float]]]) -> list[Patch]:
    return [Patch(color=colour, alpha=OVERLAY_ALPHA + 0.2, label=n) for n, colour in colours.values()]


def orthogonal_views(
    image: np.ndarray,
    label: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    modality: str = "FLAIR",
    title: str | None = None,
    centre: tuple[int, int, int] | None = None,
    colours: Mapping[int, tuple[str, tuple[float, float, float]]] = CLASS_COLOURS,
) -> Figure:
    """Axial, coronal and sagittal slices of one scan through one voxel, with the segmentation over them.

    Args:
        image: (X, Y, Z) scan of one channel, e.g. the FLAIR one.
        label: (X, Y, Z) internal label map (0 background, 1 NCR, 2 ED, 3 ET), ground truth or
            prediction, drawn semi-transparently in ``CLASS_COLOURS``.
        spacing: voxel size along X, Y and Z (mm); sets each panel's aspect ratio so anisotropic
            volumes are not distorted. Defaults to isotropic.
        modality: name of the scan for the figure title ("flair", "t1", ... are spelled as in
            ``MODALITY_TITLES``). Defaults to "FLAIR".
        title: text before the description in the figure title.
        centre: (x, y, z) voxel the three planes go through. Defaults to the tumour's (``label > 0``)
            centre of mass, rounded to the nearest voxel, or to the volume centre (``shape // 2``)
            when there is no tumour, which the figure title then says ("no tumour segmented").
        colours: class -> (legend name, RGB) of the overlay and legend. Defaults to
            ``CLASS_COLOURS`` (NCR, ED, ET).

    The orientation is ``segmentation_panel``'s for BraTS's LPS voxel order: slices are transposed,
    the patient's right on the viewer's left; the axial panel has anterior at the top (origin
    "upper"), the coronal and sagittal ones superior at the top (origin "lower"). Each panel is
    titled with its plane and slice index and carries thin crosshair lines where the other two
    planes cut it. The scan is windowed to the 1st-99th percentile of the volume's non-zero voxels,
    the same window in all three panels. The legend (NCR, ED, ET) is below the panels.

    Returns:
        The figure, with an Agg canvas and the voxel shown as ``fig.centre``, an (x, y, z) tuple
        of ints.

    Raises:
        ValueError: ``image`` and ``label`` are not 3D or their shapes differ, ``spacing`` is not
            three positive numbers, or ``centre`` is not a voxel of the volume.
    """
    image, label = np.asarray(image), np.asarray(label)
    sizes = _view_spacing(image, label, spacing)
    shape = image.shape
    point, where = _view_centre(label, centre)
    x, y, z = point
    low, high = window(image)

    # plane, slice axis, (columns, rows) voxel axes after the transpose, origin, crosshair (vertical, horizontal)
    views = [
        ("axial", 2, (0, 1), "upper", (x, y)),
        ("coronal", 1, (0, 2), "lower", (x, z)),
        ("sagittal", 0, (1, 2), "lower", (y, z)),
    ]
    widths = [shape[cols] * sizes[cols] for _, _, (cols, _), _, _ in views]
    heights = [shape[rows] * sizes[rows] for _, _, (_, rows), _, _ in views]
    scale = 9.0 / sum(widths)  # inches per mm, the panels spanning about 9 inches
    height = round(min(max(max(heights) * scale + 1.2, 3.0), 9.0), 1)  # tenths of an inch: whole pixels at 120 dpi
    fig = Figure(figsize=(9.6, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, width_ratios=widths)
    for ax, (plane, axis, (cols, rows), origin, (vertical, horizontal)) in zip(axes, views):
        index = point[axis]
        show = {"origin": origin, "interpolation": "nearest", "aspect": sizes[rows] / sizes[cols]}
        ax.imshow(np.take(image, index, axis=axis).T, cmap="gray", vmin=low, vmax=high, **show)
        ax.imshow(overlay_rgba(np.take(label, index, axis=axis).T, colours), **show)
        for line in (ax.axvline(vertical), ax.axhline(horizontal)):
            line.set(color="cyan", linewidth=0.6, alpha=0.6)
        ax.set_title(f"{plane} slice {index} of {shape[axis]}")
        ax.set_axis_off()
    fig.legend(
        handles=_legend_handles(colours), loc="outside lower center", ncols=len(colours), fontsize=9, frameon=False
    )
    text = f"{MODALITY_TITLES.get(modality.lower(), modality)} with segmentation {where} ({x}, {y}, {z})"
    text += "" if (label > 0).any() else ", no tumour segmented"
    text += "" if sizes == (1.0, 1.0, 1.0) else ", voxels {:g} x {:g} x {:g} mm".format(*sizes)
    fig.suptitle(f"{title}, {text}" if title else text)
    fig.centre = point
    return fig


def _view_spacing(image: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> tuple[float, float, float]:
    """``spacing`` as three floats, once the shapes and the voxel sizes are checked."""
    if image.ndim != 3 or label.shape != image.shape:
        raise ValueError(
            f"Expected image and label of the same (X, Y, Z) shape; got image {image.shape}, label {label.shape}."
        )
    sizes = tuple(float(s) for s in np.ravel(spacing)) if np.size(spacing) == 3 else ()
    if len(sizes) != 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(f"spacing must be three positive voxel sizes (x, y, z), got {spacing!r}.")
    return sizes


def _view_centre(label: np.ndarray, centre: Sequence[int] | None) -> tuple[tuple[int, int, int], str]:
    """The voxel the three planes go through, and how it was chosen (for the title)."""
    tumour = label > 0
    if centre is not None:
        if len(centre) != 3 or not all(0 <= int(c) < n for c, n in zip(centre, label.shape)):
            raise ValueError(f"centre {tuple(centre)} is not a voxel of a volume of shape {label.shape}.")
        return tuple(int(c) for c in centre), "through voxel"
    if tumour.any():
        return tuple(int(c) for c in np.rint(np.argwhere(tumour).mean(axis=0))), "through the tumour's centre of mass"
    return tuple(n // 2 for n in label.shape), "through the volume centre"


def _largest_tumour_slice(labels: np.ndarray, axis: int) -> int:
    area = np.count_nonzero(labels > 0, axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(area)) if area.any() else labels.shape[axis] // 2


def window(scan: np.ndarray) -> tuple[float, float]:
    """1st-99th percentile of the brain voxels: a few bright voxels must not wash out the slice."""
    finite = scan[np.isfinite(scan)]
    brain = finite[finite != 0]  # the zero background would pull the low end down
    values = brain if brain.size else finite
    if not values.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [1, 99]))
    return (low, high) if high > low else (low, low + 1.0)


def overlay_rgba(
    classes: np.ndarray, colours: Mapping[int, tuple[str, tuple[float, float, float]]] = CLASS_COLOURS
) -> np.ndarray:
    rgba = np.zeros((*classes.shape, 4), dtype=np.float32)
    for value, (_, colour) in colours.items():
        rgba[classes == value] = (*colour, OVERLAY_ALPHA)
    return rgba

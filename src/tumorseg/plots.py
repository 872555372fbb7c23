"""Figures of a training run and of a segmentation, and the readers of the logs they are drawn from.

The history of a run comes from Lightning's ``CSVLogger`` files (``epoch_history``) or from the
local files of a Weights & Biases run, offline runs included (``wandb_history``,
``wandb_epoch_history``); both give ``{metric: {epoch: value}}``, which ``plot_loss_score`` draws
as the paper's two panels, Dice loss and Dice score per epoch. ``segmentation_panel`` shows one
slice of a case: every modality, then the ground truth and the prediction over the first one;
``figure_to_array`` turns a figure into an RGB array for ``wandb.Image``.

Only ``matplotlib.figure.Figure`` and ``FigureCanvasAgg`` are used, never pyplot, so nothing here
selects a backend or touches the figures of a user's interactive session.

    history = epoch_history(["logs/version_0/metrics.csv", "logs/version_1/metrics.csv"])
    plot_loss_score(history, "figures/arunet_loss_score.png", title="AR-UNet 3D")
    save_figure(segmentation_panel(image, pred, label, title="BraTS20_Training_001"), "figures/case_001.png")
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from tumorseg.labels import CLASS_COLOURS, MODALITY_NAMES, REGION_NAMES, REGIONS

History = dict[str, dict[int, float]]

DPI = 120
OVERLAY_ALPHA = 0.5
MODALITY_TITLES = MODALITY_NAMES
AXIS_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}
REGION_KEYS = {f"val/dice_{r}": f"val {REGION_NAMES[r]}" for r in REGIONS}
# Columns of a CSVLogger file and keys of a W&B row that index the metrics rather than being one.
_INDEX_COLUMNS = ("epoch", "step")
_WANDB_INDEX_KEYS = ("epoch", "trainer/global_step")


# --------------------------------------------------------------------------------------------
# Reading the history of a run


def epoch_history(csv_paths: Sequence[str | Path]) -> History:
    """Per-epoch values of every metric in Lightning ``CSVLogger`` files.

    Args:
        csv_paths: ``metrics.csv`` files, oldest first: a run resumed into a new log folder
            after a crash gives one file per attempt. A single path is accepted too.

    Returns:
        Metric name -> {epoch: value}, for every column but ``epoch`` and ``step``, in the order
        the columns first appear. Rows are sparse (a row holds only what was logged at its step),
        so empty cells are skipped. Within a file the last row of an epoch wins; across files a
        later file's value replaces an earlier one, as the resumed run redid that epoch.

    Raises:
        FileNotFoundError: none of the files exists. Missing ones are skipped otherwise, so the
            list may name attempts that crashed before logging anything.
    """
    if isinstance(csv_paths, str | Path):
        csv_paths = [csv_paths]  # a str is a Sequence too: without this it would be read letter by letter
    paths = [Path(p) for p in csv_paths]
    existing = [p for p in paths if p.is_file()]
    if not existing:
        raise FileNotFoundError(
            f"None of the metrics files exists: {', '.join(str(p) for p in paths) or '(none given)'}"
        )
    history: History = {}
    for path in existing:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            for column in reader.fieldnames or ():
                if column not in _INDEX_COLUMNS:
                    history.setdefault(column, {})
            for row in reader:
                epoch = _to_float(row.get("epoch"))
                if epoch is None:
                    continue  # a row outside any epoch cannot be placed on the plot
                for column, cell in row.items():
                    if column is None or column in _INDEX_COLUMNS:
                        continue  # None holds the surplus cells of a ragged row
                    value = _to_float(cell)
                    if value is not None:
                        history[column][int(epoch)] = value
    return history


def wandb_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """History rows of a W&B run read from its local transaction log, offline runs included.

    A run folder (``wandb/offline-run-<time>-<id>`` or ``wandb/run-<time>-<id>``) holds the
    ``run-<id>.wandb`` log of every record the run sent. wandb 0.31 has no public reader for it
    (the Python ``DataStore`` of earlier releases is gone and ``wandb.Api`` needs the server),
    so the framing (LevelDB's log format: a 7-byte ``:W&B`` header, then 32 KiB blocks of
    checksummed chunks) is read here and each record is decoded with wandb's own protobuf
    ``wandb.proto.wandb_internal_pb2.Record``.

    Args:
        run_dir: the run folder or its ``.wandb`` file.

    Returns:
        One dict per ``wandb.log`` row, in order: key -> JSON-decoded value, with W&B's own keys
        (``_step``, ``_runtime``, ``_timestamp``) included. Nested keys are joined with ``.``,
        as W&B names them. The tail of a run that is still writing or that was killed mid-write
        is left out.

    Raises:
        FileNotFoundError: no ``.wandb`` file at ``run_dir``.
        ValueError: the file is not a W&B transaction log or is corrupt.
    """
    from wandb.proto import wandb_internal_pb2  # imported here: wandb is slow to import

    path = _find_wandb_file(Path(run_dir))
    rows = []
    for data in _scan_wandb_log(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            # wandb-core writes nested_key only; the Python backend of older releases wrote key
            key = ".".join(item.nested_key) if item.nested_key else item.key
            # json also reads the NaN and Infinity that W&B writes for non-finite floats
            row[key] = json.loads(item.value_json) if item.value_json else None
        rows.append(row)
    return rows


def wandb_epoch_history(run_dir: str | Path) -> History:
    """Per-epoch values of every numeric metric of a W&B run, shaped as ``epoch_history``'s.

    Args:
        run_dir: the run folder or its ``.wandb`` file.

    Returns:
        Metric name -> {epoch: value}, from the rows that carry an ``epoch`` (Lightning's
        ``WandbLogger`` adds it to every row); the last value of an epoch wins. Non-numeric values
        (media, strings, booleans), W&B's ``_``-prefixed keys and Lightning's
        ``trainer/global_step`` are left out.
    """
    history: History = {}
    for row in wandb_history(run_dir):
        epoch = row.get("epoch")
        if not _is_number(epoch) or not math.isfinite(epoch):
            continue
        for key, value in row.items():
            if key in _WANDB_INDEX_KEYS or key.startswith("_") or not _is_number(value):
                continue
            history.setdefault(key, {})[int(epoch)] = float(value)
    return history


def _to_float(cell: str | None) -> float | None:
    if cell is None or not cell.strip():
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _find_wandb_file(run_dir: Path) -> Path:
    if run_dir.is_file():
        if run_dir.suffix != ".wandb":
            raise FileNotFoundError(f"{run_dir} is not a W&B run log (run-<id>.wandb).")
        return run_dir
    if not run_dir.is_dir():
        raise FileNotFoundError(f"No W&B run folder or .wandb file at {run_dir}.")
    found = sorted(run_dir.glob("run-*.wandb")) or sorted(run_dir.glob("*.wandb"))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise FileNotFoundError(f"{run_dir} holds several .wandb files, pass one: {', '.join(map(str, found))}")
    # Pointed at the wandb/ folder or above it: name the runs there rather than just failing.
    runs = sorted({p.parent for p in [*run_dir.glob("*/run-*.wandb"), *run_dir.glob("wandb/*/run-*.wandb")]})
    hint = f"; run folders below it: {', '.join(map(str, runs))}" if runs else ""
    raise FileNotFoundError(f"No .wandb file in {run_dir} (expected a W&B run folder with run-<id>.wandb){hint}")


# LevelDB log format as W&B writes it (wandb/sdk/internal/datastore.py in earlier releases,
# core/pkg/leveldb in wandb-core): https://github.com/google/leveldb/blob/main/doc/log_format.md
_LOG_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_LOG_IDENT, _LOG_MAGIC, _LOG_VERSION = b":W&B", 0xBEE1, 0
_CHUNK_HEADER = struct.Struct("<IHB")  # checksum, length, type
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
# W&B's checksum is zlib's CRC-32 of the data seeded with the CRC-32 of the type byte (not LevelDB's CRC-32C)
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (_FULL, _FIRST, _MIDDLE, _LAST)}


def _scan_wandb_log(path: Path) -> Iterator[bytes]:
    """Yield the serialized records of a W&B transaction log, reassembled from their chunks."""
    data = path.read_bytes()
    if len(data) < _LOG_HEADER.size or _LOG_HEADER.unpack_from(data) != (_LOG_IDENT, _LOG_MAGIC, _LOG_VERSION):
        raise ValueError(f"{path} is not a W&B transaction log (no ':W&B' header of version {_LOG_VERSION}).")
    offset = _LOG_HEADER.size
    pending: list[bytes] | None = None  # chunks of a record split across blocks
    while True:
        if _BLOCK - offset % _BLOCK < _CHUNK_HEADER.size:
            offset += _BLOCK - offset % _BLOCK  # a block's last bytes are zero padding when no header fits
        if offset + _CHUNK_HEADER.size > len(data):
            return  # end of file, or a header cut off by a run still writing or killed mid-write
        checksum, length, kind = _CHUNK_HEADER.unpack_from(data, offset)
        start = offset + _CHUNK_HEADER.size
        if start + length > len(data):
            return  # chunk cut off in the same way
        chunk = data[start : start + length]
        if kind not in _TYPE_CRC or zlib.crc32(chunk, _TYPE_CRC[kind]) != checksum:
            raise ValueError(f"{path}: corrupt record at byte {offset} (bad checksum or chunk type {kind}).")
        offset = start + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = [chunk]
        elif pending is None:
            raise ValueError(f"{path}: chunk of type {kind} at byte {offset} continues no record.")
        else:
            pending.append(chunk)
            if kind == _LAST:
                yield b"".join(pending)
                pending = None


# --------------------------------------------------------------------------------------------
# Figures


def save_figure(fig: Figure, path: str | Path, *, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG atomically: a reader never sees a half-written file.

    The image goes to a temporary file in the destination folder (so the rename stays on one file
    system) which then replaces ``path``. The figure's canvas is left as it is.

    Args:
        fig: the figure.
        path: destination; missing parent folders are created.
        dpi: resolution. Defaults to 120.

    Returns:
        ``path`` as a Path.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return write_atomic(path, buffer.getvalue())


def write_atomic(path: str | Path, content: str | bytes) -> Path:
    """Write a file whole or not at all: a temporary file in the same folder, fsynced, renamed into
    place, with the permissions the umask gives new files (mkstemp's are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an (H, W, 3) uint8 RGB array, e.g. for ``wandb.Image``.

    Figures with an Agg canvas (those made here, and pyplot figures on an Agg-based backend) are
    drawn in place; any other figure is rendered through a PNG so its canvas is not replaced.
    """
    canvas = fig.canvas
    if isinstance(canvas, FigureCanvasAgg):
        canvas.draw()
        return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])
    from PIL import Image  # a dependency of matplotlib

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi="figure")
    buffer.seek(0)
    with Image.open(buffer) as image:
        return np.array(image.convert("RGB"))


def plot_loss_score(
    history: Mapping[str, Mapping[int, float]],
    out_path: str | Path,
    *,
    title: str | None = None,
    loss_key: str = "dice_loss",
    score_key: str = "dice_mean",
) -> Path:
    """The paper's training figure: Dice loss (left) and Dice score (right) per epoch, train and val.

    Args:
        history: metric name -> {epoch: value}, as ``epoch_history`` or ``wandb_epoch_history`` give.
        out_path: PNG to write (atomically, at 120 dpi).
        title: figure title. Defaults to none.
        loss_key: metric under ``train/`` and ``val/`` drawn on the left. Defaults to "dice_loss".
        score_key: metric under ``train/`` and ``val/`` drawn on the right. Defaults to "dice_mean".
            ``val/dice_wt``, ``val/dice_tc`` and ``val/dice_et`` are added as thin lines when present.

    Each name is looked up as given, then with Lightning's ``_epoch`` suffix (what ``self.log``
    with ``on_step=True, on_epoch=True`` produces). Absent series are skipped.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ValueError: none of the four train/val loss and score series is in ``history``.
    """
    panels = {
        "Dice loss": [(f"train/{loss_key}", "train", "C0"), (f"val/{loss_key}", "val", "C1")],
        "Dice score": [(f"train/{score_key}", "train", "C0"), (f"val/{score_key}", "val", "C1")],
    }
    series = {key: _series(history, key) for lines in panels.values() for key, _, _ in lines}
    if not any(series.values()):
        found = ", ".join(sorted(history)) or "none"
        raise ValueError(f"No {', '.join(series)} (or their _epoch forms) in the history; metrics found: {found}.")

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, (name, lines) in zip(axes, panels.items()):
        for key, label, colour in lines:
            if series[key]:
                epochs, values = series[key]
                ax.plot(epochs, values, marker="o", markersize=4, linewidth=1.8, color=colour, label=label)
        if name == "Dice score":
            for (key, label), colour in zip(REGION_KEYS.items(), ("C2", "C3", "C4")):
                region = _series(history, key)
                if region:  # the region Dice of the evaluation regions, thin so the mean stays the focus
                    ax.plot(*region, "--", marker=".", markersize=3, linewidth=0.8, color=colour, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole numbers, even one
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.5")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path)


def _series(history: Mapping[str, Mapping[int, float]], key: str) -> tuple[list[int], list[float]] | None:
    values = history.get(key) or history.get(f"{key}_epoch")
    if not values:
        return None
    epochs = sorted(values)
    return epochs, [values[e] for e in epochs]


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

    Slices are shown transposed, so the first remaining voxel axis runs left to right: with LPS
    voxels the patient's right is on the viewer's left (radiological view) in every figure.
    Scans are windowed to the 1st-99th percentile of the slice's brain (non-zero) voxels.

    Returns:
        The figure, with an Agg canvas: save it with ``save_figure`` or log ``figure_to_array(fig)``.

    Raises:
        ValueError: the shapes of ``image``, ``pred`` and ``label`` do not match, or ``axis`` or
            ``index`` is out of range.
    """
    image = np.asarray(image)
    pred = np.asarray(pred)
    label = None if label is None else np.asarray(label)
    if image.ndim != 4 or pred.shape != image.shape[1:] or (label is not None and label.shape != pred.shape):
        shapes = f"image {image.shape}, pred {pred.shape}" + ("" if label is None else f", label {label.shape}")
        raise ValueError(f"Expected image (C, X, Y, Z) and pred/label (X, Y, Z) of the same size; got {shapes}.")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}.")
    if index is None:
        index = _largest_tumour_slice(label if label is not None and label.any() else pred, axis)
    elif not 0 <= index < pred.shape[axis]:
        raise ValueError(f"Slice index {index} is out of range for axis {axis} of size {pred.shape[axis]}.")
    if origin is None:
        origin = "upper" if axis == 2 else "lower"

    names = [*modalities[: image.shape[0]], *(f"ch{c}" for c in range(len(modalities), image.shape[0]))]
    scans = [np.take(image[c], index, axis=axis).T for c in range(image.shape[0])]
    windows = [_window(s) for s in scans]
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
        ax.imshow(_overlay(np.take(volume, index, axis=axis).T), origin=origin, interpolation="nearest")
        ax.set_title(f"{name} on {MODALITY_TITLES.get(names[0], names[0])}")
    axes[-1].legend(
        handles=[Patch(color=colour, alpha=OVERLAY_ALPHA + 0.2, label=n) for n, colour in CLASS_COLOURS.values()],
        loc="lower right",
        fontsize=8,
        framealpha=0.8,
    )
    for ax in axes:
        ax.set_axis_off()
    where = f"{AXIS_NAMES[axis]} slice {index} of {pred.shape[axis]}"
    fig.suptitle(f"{title}, {where}" if title else where)
    return fig


def orthogonal_views(
    image: np.ndarray,
    label: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    modality: str = "FLAIR",
    title: str | None = None,
    centre: tuple[int, int, int] | None = None,
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
    image = np.asarray(image)
    label = np.asarray(label)
    if image.ndim != 3 or label.shape != image.shape:
        raise ValueError(
            f"Expected image and label of the same (X, Y, Z) shape; got image {image.shape}, label {label.shape}."
        )
    sizes = tuple(float(s) for s in np.ravel(spacing)) if np.size(spacing) == 3 else ()
    if len(sizes) != 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(f"spacing must be three positive voxel sizes (x, y, z), got {spacing!r}.")
    shape = image.shape
    tumour = label > 0
    has_tumour = bool(tumour.any())
    if centre is not None:
        if len(centre) != 3 or not all(0 <= int(c) < n for c, n in zip(centre, shape)):
            raise ValueError(f"centre {tuple(centre)} is not a voxel of a volume of shape {shape}.")
        point = tuple(int(c) for c in centre)
        where = "through voxel"
    elif has_tumour:
        point = tuple(int(c) for c in np.rint(np.argwhere(tumour).mean(axis=0)))
        where = "through the tumour's centre of mass"
    else:
        point = tuple(n // 2 for n in shape)
        where = "through the volume centre"
    x, y, z = point
    sx, sy, sz = sizes
    low, high = _window(image)

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
        ax.imshow(
            np.take(image, index, axis=axis).T,
            cmap="gray",
            vmin=low,
            vmax=high,
            origin=origin,
            interpolation="nearest",
            aspect=sizes[rows] / sizes[cols],
        )
        ax.imshow(
            _overlay(np.take(label, index, axis=axis).T),
            origin=origin,
            interpolation="nearest",
            aspect=sizes[rows] / sizes[cols],
        )
        for line in (ax.axvline(vertical), ax.axhline(horizontal)):
            line.set(color="cyan", linewidth=0.6, alpha=0.6)
        ax.set_title(f"{plane} slice {index} of {shape[axis]}")
        ax.set_axis_off()
    fig.legend(
        handles=[Patch(color=colour, alpha=OVERLAY_ALPHA + 0.2, label=n) for n, colour in CLASS_COLOURS.values()],
        loc="outside lower center",
        ncols=len(CLASS_COLOURS),
        fontsize=9,
        frameon=False,
    )
    name = MODALITY_TITLES.get(modality.lower(), modality)
    text = f"{name} with segmentation {where} ({x}, {y}, {z})"
    if not has_tumour:
        text += ", no tumour segmented"
    if (sx, sy, sz) != (1.0, 1.0, 1.0):
        text += f", voxels {sx:g} x {sy:g} x {sz:g} mm"
    fig.suptitle(f"{title}, {text}" if title else text)
    fig.centre = point
    return fig


def _largest_tumour_slice(labels: np.ndarray, axis: int) -> int:
    area = np.count_nonzero(labels > 0, axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(area)) if area.any() else labels.shape[axis] // 2


def _window(scan: np.ndarray) -> tuple[float, float]:
    """1st-99th percentile of the brain voxels: a few bright voxels must not wash out the slice."""
    finite = scan[np.isfinite(scan)]
    brain = finite[finite != 0]  # the zero background would pull the low end down
    values = brain if brain.size else finite
    if not values.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [1, 99]))
    return (low, high) if high > low else (low, low + 1.0)


def _overlay(classes: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*classes.shape, 4), dtype=np.float32)
    for value, (_, colour) in CLASS_COLOURS.items():
        rgba[classes == value] = (*colour, OVERLAY_ALPHA)
    return rgba

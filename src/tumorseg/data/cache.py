"""Preprocessing cache: every case cropped, normalised and stored once, memory-mappable.

Each case is read once (``reading.check_case``, which also finds its problems), cropped to the
bounding box of the brain (voxels non-zero in any modality: BraTS images are skull-stripped with a
zero background), optionally resampled, z-scored per modality over brain voxels (background 0),
and stored uncompressed as ``.npy`` files that training opens with ``np.load(mmap_mode="c")``:

    <cache_dir>/<settings key>/<case_id>/image.npy        float16 (4, x, y, z)
                                        /label.npy        uint8 (x, y, z), internal classes
                                        /foreground.npy   int16 (n, 3), tumour voxels for the sampler
                                        /meta.json        geometry, crop box, sources, fingerprint

The settings key hashes the preprocessing settings (and this module's format version); each entry
records a fingerprint of its source files (path, size, modification time), so a changed source
or changed settings rebuild the entry and nothing else. Entries are written to a temporary folder
renamed into place once complete, and ``meta.json`` is written last: a killed build never leaves
an entry that is later trusted, and concurrent builders (DDP ranks, nodes sharing a file system)
cannot corrupt each other. float16 keeps z-scores to about 3 significant digits, far below MRI
noise, and halves the I/O per patch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tumorseg.arrays import bounding_box
from tumorseg.data.layouts import Case, Discovery, Problem, Volume
from tumorseg.data.reading import check_case
from tumorseg.io import atomic_path, write_atomic
from tumorseg.labels import MODALITIES

FORMAT_VERSION = 1
MAX_FOREGROUND = 20_000  # tumour voxel coordinates kept per case for foreground sampling


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing settings; every field is part of the cache key.

    Args:
        spacing: resample to this voxel size in mm, or None to keep the source spacing (BraTS is
            already 1 mm isotropic). Defaults to None.
        margin: voxels of background kept around the brain's bounding box. Defaults to 0.
        dtype: storage type of the normalised images, ``"float16"`` or ``"float32"``.
            Defaults to ``"float16"``.
        modalities: the modalities kept, in this order (e.g. ``["flair"]``, as the paper trained),
            or None for all four. Defaults to None.
        slices: keep the axial slices ``[start, stop)`` of the source (the paper: 40-103, given as
            ``[40, 104]``), or None for all. Defaults to None.
        in_plane: resize every axial slice to this (x, y) size (the paper: 64x64, 224x224 or
            128x128), or None. Cannot be combined with ``spacing``. Defaults to None.
        crop: crop x and y (and z, unless ``slices`` is given) to the brain's bounding box; the
            paper resized whole slices. Defaults to True.
    """

    spacing: tuple[float, float, float] | None = None
    margin: int = 0
    dtype: str = "float16"
    modalities: tuple[str, ...] | None = None
    slices: tuple[int, int] | None = None
    in_plane: tuple[int, int] | None = None
    crop: bool = True

    def __post_init__(self):
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            if len(spacing) != 3 or min(spacing) <= 0:
                raise ValueError(f"`spacing` must be 3 positive voxel sizes in mm or None, got {self.spacing!r}.")
            object.__setattr__(self, "spacing", spacing)
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise ValueError(f"`margin` must be a non-negative integer, got {self.margin!r}.")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"`dtype` must be 'float16' or 'float32', got {self.dtype!r}.")
        if self.modalities is not None:
            modalities = tuple(self.modalities)
            if not modalities or len(set(modalities)) != len(modalities) or not set(modalities) <= set(MODALITIES):
                raise ValueError(
                    f"`modalities` must be distinct names among {list(MODALITIES)}, or None for all; got {self.modalities!r}."
                )
            object.__setattr__(self, "modalities", None if modalities == MODALITIES else modalities)
        if self.slices is not None:
            slices = tuple(self.slices)
            if (
                len(slices) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) for v in slices)
                or not 0 <= slices[0] < slices[1]
            ):
                raise ValueError(f"`slices` must be [start, stop) with 0 <= start < stop, got {self.slices!r}.")
            object.__setattr__(self, "slices", slices)
        if self.in_plane is not None:
            size = tuple(self.in_plane)
            if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
                raise ValueError(f"`in_plane` must be two positive integers (x, y), got {self.in_plane!r}.")
            if self.spacing is not None:
                raise ValueError("`in_plane` and `spacing` both set the grid; give one of them.")
            object.__setattr__(self, "in_plane", size)
        if not isinstance(self.crop, bool):
            raise ValueError(f"`crop` must be true or false, got {self.crop!r}.")

    @property
    def channels(self) -> tuple[str, ...]:
        """The modalities stored, in order."""
        return self.modalities or MODALITIES

    @property
    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": FORMAT_VERSION}, sort_keys=True)
        return f"v{FORMAT_VERSION}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


@dataclass
class CacheEntry:
    """One preprocessed case in the cache."""

    case_id: str
    path: Path
    meta: dict

    @property
    def image_path(self) -> Path:
        return self.path / "image.npy"

    @property
    def label_path(self) -> Path | None:
        return self.path / "label.npy" if self.meta["has_label"] else None

    @property
    def foreground_path(self) -> Path:
        return self.path / "foreground.npy"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["stored_shape"])

    def load(self, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """The stored image (and label): copy-on-write memory maps, or arrays in memory."""
        mode = "c" if mmap else None
        label = np.load(self.label_path, mmap_mode=mode) if self.label_path else None
        return np.load(self.image_path, mmap_mode=mode), label


@dataclass
class Cache:
    """The entries of a built cache, and the problems of the cases that could not be cached."""

    root: Path
    entries: list[CacheEntry]
    problems: list[Problem] = field(default_factory=list)
    built: int = 0
    reused: int = 0


def fingerprint(case: Case) -> str:
    """Hash of the case's source files (resolved path, size, modification time), layout and label
    convention (where it is not the layout's: the same files read as BraTS 2024 make other labels)."""
    h = hashlib.sha1(case.layout.encode())
    if case.convention is not None:
        h.update(f"|convention={case.convention}".encode())
    for path in case.files:
        st = Path(path).stat()
        h.update(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def brain_bbox(image: np.ndarray, margin: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Bounding box (start, stop) of the voxels of (C, X, Y, Z) ``image`` non-zero in any channel,
    grown by ``margin``."""
    box = bounding_box(np.any(image != 0, axis=0), margin)
    return tuple(s.start for s in box), tuple(s.stop for s in box)


def _resample(array: np.ndarray, shape: tuple[int, int, int], label: bool) -> np.ndarray:
    """Resample (x, y, z) or (c, x, y, z) to ``shape``: trilinear, or nearest for label maps."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).float()
    single = tensor.ndim == 3
    tensor = tensor[None, None] if single else tensor[None]
    if label:
        out = F.interpolate(tensor, size=shape, mode="nearest-exact")
    else:
        out = F.interpolate(tensor, size=shape, mode="trilinear", align_corners=False)
    out = out[0, 0] if single else out[0]
    return out.numpy().astype(array.dtype if label else np.float32)


def preprocess(volume: Volume, config: PreprocessConfig, case_id: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Select, crop, resample and normalise one case; returns (image, label, geometry for ``meta.json``).

    ``volume.image`` holds the channels of ``config.channels`` (all four modalities in
    ``MODALITIES`` order, or exactly the configured ones).
    """
    source = volume.image
    if len(source) == len(MODALITIES) and config.modalities is not None:
        source = source[[MODALITIES.index(m) for m in config.modalities]]
    if len(source) != len(config.channels):
        raise ValueError(f"case {case_id}: {len(source)} image channels for the modalities {list(config.channels)}.")
    shape = source.shape[1:]
    if config.crop:
        start, stop = (list(v) for v in brain_bbox(source, config.margin))
    else:
        start, stop = [0, 0, 0], list(shape)
    if config.slices is not None:
        first, last = config.slices
        if last > shape[2]:
            raise ValueError(
                f"case {case_id}: `slices` [{first}, {last}) needs {last} axial slices, the image has {shape[2]}."
            )
        start[2], stop[2] = first, last
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    image = source[(slice(None), *box)].astype(np.float32)
    label = None if volume.label is None else volume.label[box]
    cropped_shape = image.shape[1:]

    spacing = tuple(float(s) for s in volume.spacing)
    if config.spacing is not None and not np.allclose(spacing, config.spacing, atol=1e-3):
        shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(cropped_shape, spacing, config.spacing))
        image = _resample(image, shape, label=False)
        label = None if label is None else _resample(label, shape, label=True)
        spacing = config.spacing
    elif config.in_plane is not None and tuple(cropped_shape[:2]) != config.in_plane:
        shape = (*config.in_plane, cropped_shape[2])
        spacing = (spacing[0] * cropped_shape[0] / shape[0], spacing[1] * cropped_shape[1] / shape[1], spacing[2])
        image = _resample(image, shape, label=False)
        label = None if label is None else _resample(label, shape, label=True)

    brain = np.any(image != 0, axis=0)
    stats = []
    for channel in image:
        values = channel[brain]
        # a slice range may hold no brain at all: leave such a channel at zero
        mean, std = (float(values.mean()), float(values.std())) if values.size else (0.0, 1.0)
        channel -= mean
        channel /= max(std, 1e-8)
        channel[~brain] = 0
        stats.append({"mean": mean, "std": std})

    meta = {
        "case_id": case_id,
        "original_shape": list(volume.image.shape[1:]),
        "original_affine": np.asarray(volume.affine).tolist(),
        "original_spacing": [float(s) for s in volume.spacing],
        "crop_start": list(start),
        "crop_stop": list(stop),
        "cropped_shape": list(cropped_shape),
        "stored_shape": list(image.shape[1:]),
        "stored_spacing": list(spacing),
        "normalisation": stats,
        "modalities": list(config.channels),
        "has_label": label is not None,
    }
    return image.astype(config.dtype), label, meta


def foreground_coordinates(label: np.ndarray | None, case_id: str) -> np.ndarray:
    """Up to ``MAX_FOREGROUND`` tumour voxel coordinates, subsampled reproducibly per case."""
    if label is None:
        return np.zeros((0, 3), dtype=np.int16)
    coords = np.argwhere(label > 0)
    if len(coords) > MAX_FOREGROUND:
        seed = int(hashlib.sha1(case_id.encode()).hexdigest()[:8], 16)
        coords = coords[np.sort(np.random.default_rng(seed).choice(len(coords), MAX_FOREGROUND, replace=False))]
    return coords.astype(np.int16)


def restore_geometry(array: np.ndarray, meta: dict, *, label: bool) -> np.ndarray:
    """Map an array on the stored grid back to the source grid (inverse of crop and resampling).

    ``array`` is (x, y, z) or (c, x, y, z) on the stored grid; the result has the source's shape,
    zeros outside the crop box. Label maps are resampled by nearest neighbour.
    """
    array = np.asarray(array)
    stored, cropped = tuple(meta["stored_shape"]), tuple(meta["cropped_shape"])
    if array.shape[-3:] != stored:
        raise ValueError(
            f"case {meta['case_id']}: array of shape {array.shape} does not match the stored grid {stored}."
        )
    if stored != cropped:
        array = _resample(array, cropped, label=label)
    out = np.zeros(array.shape[:-3] + tuple(meta["original_shape"]), dtype=array.dtype)
    box = tuple(slice(a, b) for a, b in zip(meta["crop_start"], meta["crop_stop"]))
    out[(..., *box)] = array
    return out


def _entry_dir(settings_dir: Path, case_id: str) -> Path:
    return settings_dir / case_id


def read_entry(settings_dir: Path, case: Case, fp: str | None = None) -> CacheEntry | None:
    """The cached entry of ``case`` if it is complete and matches the sources, else None."""
    path = _entry_dir(settings_dir, case.case_id)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    entry = CacheEntry(case.case_id, path, meta)
    if meta.get("fingerprint") != (fp or fingerprint(case)) or meta.get("version") != FORMAT_VERSION:
        return None
    expected = [entry.image_path, entry.foreground_path] + ([entry.label_path] if entry.label_path else [])
    return entry if all(p.is_file() for p in expected) else None


def _write_entry(settings_dir: Path, case: Case, config: PreprocessConfig) -> tuple[CacheEntry | None, list[Problem]]:
    """Read, check, preprocess and atomically store one case (runs in a worker process)."""
    fp = fingerprint(case)
    volume, problems = check_case(case)
    if volume is None or problems:
        return None, problems
    try:
        image, label, geometry = preprocess(volume, config, case.case_id)
    except ValueError as err:  # settings this case cannot meet (too few slices for `slices`)
        return None, [Problem(f"{err}; change the preprocessing settings or leave the case out.", case.case_id)]
    meta = {
        **geometry,
        "version": FORMAT_VERSION,
        "layout": case.layout,
        **({"convention": case.convention} if case.convention else {}),
        "sources": [str(Path(p).resolve()) for p in case.files],
        "fingerprint": fp,
        "dtype": config.dtype,
    }
    tmp = settings_dir / f".{case.case_id}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        # each file fsynced (atomic_path) before the folder is renamed into place: a power cut cannot
        # leave a trusted entry whose arrays were never written to disk
        arrays = {"image.npy": image, "label.npy": label, "foreground.npy": foreground_coordinates(label, case.case_id)}
        for name, array in arrays.items():
            if array is not None:
                with atomic_path(tmp / name) as path:
                    np.save(path, array)
        write_atomic(tmp / "meta.json", json.dumps(meta, indent=1))  # last: its presence marks completeness
        final = _entry_dir(settings_dir, case.case_id)
        if final.exists():
            existing = read_entry(settings_dir, case, fp)
            if existing is not None:  # another builder finished this case meanwhile: keep its entry
                return existing, []
            # a stale entry: move it aside, since a folder cannot be renamed onto a non-empty one
            stale = final.with_name(f".{case.case_id}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(final, stale)
            except FileNotFoundError:  # another builder moved it aside first
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same case first
            if read_entry(settings_dir, case, fp) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_entry(settings_dir, case, fp), []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_leftovers(settings_dir: Path) -> None:
    """Remove what killed builders left: their unfinished entries (this host's, whose process is
    gone) and entries moved aside as stale. Neither is ever trusted; this only frees the disk."""
    host = socket.gethostname()
    for path in settings_dir.glob(".*.tmp-*"):
        owner = path.name.rsplit(".tmp-", 1)[1].rsplit("-", 2)
        if len(owner) == 3 and owner[0] == host and owner[1].isdigit() and not _alive(int(owner[1])):
            shutil.rmtree(path, ignore_errors=True)
    for path in settings_dir.glob(".*.stale-*"):
        shutil.rmtree(path, ignore_errors=True)


def build_cache(
    discovery: Discovery,
    cache_dir: str | Path,
    config: PreprocessConfig = PreprocessConfig(),
    *,
    workers: int = 1,
    progress: bool = True,
) -> Cache:
    """Preprocess the discovered cases that are not cached yet and return all entries.

    Cases with problems are left out and their problems returned (together with the problems
    found during discovery); the caller decides whether to refuse the dataset.
    """
    settings_dir = Path(cache_dir) / config.key
    settings_dir.mkdir(parents=True, exist_ok=True)
    settings_file = settings_dir / "settings.json"
    if not settings_file.exists():  # whole or absent: a killed run must not leave it truncated for good
        write_atomic(settings_file, json.dumps({**asdict(config), "version": FORMAT_VERSION}, indent=1))
    _remove_leftovers(settings_dir)

    entries: dict[str, CacheEntry] = {}
    todo = []
    for case in discovery.cases:
        entry = read_entry(settings_dir, case)
        if entry is None:
            todo.append(case)
        else:
            entries[case.case_id] = entry
    cache = Cache(settings_dir, [], list(discovery.problems), reused=len(entries))

    if todo:
        from rich.progress import Progress

        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"preprocessing {len(todo)} cases into {settings_dir}", total=len(todo))
            if workers > 1:
                # spawned, not forked: a process whose OpenMP pool already ran (a multirun's later job)
                # hands forked children a dead pool, and their first parallel torch op hangs
                with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
                    futures = [(c, pool.submit(_write_entry, settings_dir, c, config)) for c in todo]
                    for case, future in futures:
                        _collect(cache, entries, case, future.result)
                        bar.advance(task)
            else:
                for case in todo:
                    _collect(cache, entries, case, lambda c=case: _write_entry(settings_dir, c, config))
                    bar.advance(task)
    cache.entries = [entries[c.case_id] for c in discovery.cases if c.case_id in entries]
    return cache


def _collect(cache: Cache, entries: dict, case: Case, result) -> None:
    try:
        entry, problems = result()
    except (OSError, ValueError) as err:
        entry, problems = None, [Problem(f"could not be preprocessed: {err}", case_id=case.case_id)]
    cache.problems.extend(problems)
    if entry is not None:
        entries[case.case_id] = entry
        cache.built += 1

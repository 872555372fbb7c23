"""Synthetic BraTS-like phantoms: four MRI modalities and a tumour label map per case.

Each case is a skull-stripped head (a noise-deformed ellipsoid filled with white matter, a folded
grey-matter cortex, sulci, an interhemispheric fissure, deep grey nuclei and lateral ventricles)
holding 1-3 irregular tumours. A tumour has a necrotic core (NCR), an enhancing rim (ET) and
surrounding edema (ED), with the contrasts they have on real scans, so a network needs all four
modalities to tell the classes apart:

========  =====  =====  ======  =====
class     FLAIR  T1     T1ce    T2
========  =====  =====  ======  =====
CSF       --     --     --      ++
ED        ++     -      -       +
ET        ~      -      ++      ~
NCR       +      --     --      ++
blood     +      +      +       ~
========  =====  =====  ======  =====

(signal against healthy brain, ~ about that of grey matter.) Blood products inside some cores are
labelled NCR and are why T1 is needed: they are bright on T1ce without enhancing. About 15% of
cases have a tiny or no enhancing tumour, as low-grade gliomas do. The images then go through what
a scanner does: partial-volume blur, a smooth multiplicative bias field, Rician noise and a random
intensity scale and offset per modality, so intensity normalisation matters.

Command line::

    python -m tumorseg.data.synthetic OUT --cases N --seed S [--shape X Y Z] [--preview] [--workers K] [--debug]

writes the BraTS 2020 layout ``OUT/BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii.gz``:
int16 images, uint8 labels with the BraTS 2020 values 0 background, 1 NCR, 2 ED, 4 ET, a 1 mm
isotropic LPS affine like real BraTS, 240x240x155 voxels by default. ``--preview`` adds
``OUT/previews/<case_id>.png``, an axial slice through the tumour of each modality and the label.

Reproducibility: case ``i`` is drawn from ``np.random.default_rng([seed, i])`` alone and the files
are gzipped without a timestamp or file name, so identical arguments give byte-identical files,
whatever ``--workers`` is and however many ``--cases`` are asked for.

Safety: ``OUT`` must be empty (hidden entries aside) or a folder this generator wrote with the same
seed, shape and phantom version, as recorded in ``OUT/synthetic.json``; anything else is refused,
and so are case folders in it that the generator never planned. Every file is written to a hidden
temporary name in its folder and renamed into place, so a killed run never leaves a truncated
file under a final name. A case counts as complete, and is skipped when the same command runs
again, when the manifest lists it (it is listed only after all five files are in place) and every
file still has the SHA-256 recorded there (and, with ``--preview``, its PNG exists); any other case
is generated again, which rewrites its five files and removes temporary files a killed run left.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import multiprocessing
import numbers
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from scipy import ndimage

from tumorseg.cli import add_debug_option, environment, run_command
from tumorseg.io import write_atomic
from tumorseg.labels import CLASS_COLOURS, CONVENTIONS, MODALITIES, MODALITY_NAMES

__all__ = ["DEFAULT_SHAPE", "MANIFEST", "brats_affine", "case_id", "generate_dataset", "main", "make_phantom"]

DEFAULT_SHAPE = (240, 240, 155)  # BraTS: 1 mm voxels, axes running R->L, A->P, I->S
MIN_SIZE = 16  # voxels per axis below which the anatomy has no room
GENERATOR = "tumorseg.data.synthetic"
MANIFEST = "synthetic.json"
CASE_PREFIX = "BraTS20_Training_"
# Bump whenever make_phantom's output changes, so folders written by an older version are refused
# instead of being topped up with cases that do not match.
PHANTOM_VERSION = 1
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
GZIP_LEVEL = 1  # nibabel's default for .nii.gz: level 6+ is 2-3x slower for 2% smaller files

# Tissue classes while the phantom is built; BRATS_LABEL maps them to the values written to disk.
BACKGROUND, CSF, GM, WM, ED, NCR, ET, BLOOD = range(8)
BRATS_LABEL = np.array([0, 0, 0, 0, 2, 1, 4, 1], dtype=np.uint8)

# Signal of each class per modality (columns in MODALITIES order: flair, t1, t1ce, t2), relative
# to white matter on T1, after the usual clinical appearance of gliomas.
CONTRAST = np.array(
    [
        [0.00, 0.00, 0.00, 0.00],  # background
        [0.15, 0.30, 0.32, 1.60],  # CSF: suppressed on FLAIR, the brightest tissue on T2
        [0.90, 0.72, 0.76, 0.80],  # grey matter
        [0.70, 1.00, 1.00, 0.55],  # white matter
        [1.55, 0.68, 0.70, 1.30],  # edema: bright on FLAIR and T2, slightly dark on T1 and T1ce
        [1.00, 0.45, 0.40, 1.55],  # necrosis / non-enhancing core: dark on T1ce, bright on T2
        [0.90, 0.75, 1.80, 0.80],  # enhancing tumour: bright on T1ce only, grey-matter-like elsewhere
        [1.10, 1.40, 1.45, 0.70],  # blood products: bright on T1 as well as T1ce, so not enhancement
    ],
    dtype=np.float32,
)
# Relative amplitude of the fine texture: tumours are more heterogeneous than healthy tissue.
TEXTURE = np.array([0.0, 0.03, 0.03, 0.03, 0.05, 0.10, 0.10, 0.10], dtype=np.float32)

BRAIN_FRACTION = np.array([0.60, 0.74, 0.80])  # brain semi-axes / half the volume, about as in BraTS
BRAIN_DEFORM = 0.07  # the surface moves by at most this fraction of the radius
# the phantoms' labels are BraTS 2020 values: each value gets the colour of its internal class
PREVIEW_COLOURS = {value: CLASS_COLOURS[cls] for value, cls in CONVENTIONS["brats2020"].items() if cls}


def case_id(index: int) -> str:
    """BraTS 2020 case name of the 1-based case ``index``, e.g. ``BraTS20_Training_001``."""
    return f"{CASE_PREFIX}{index:03d}"


def brats_affine(shape: Sequence[int]) -> np.ndarray:
    """1 mm isotropic voxel-to-world affine in LPS orientation (BraTS's), volume centre at the origin."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = (np.asarray(shape[:3], dtype=float) - 1) / 2 * [1, 1, -1]
    return affine


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < MIN_SIZE:
        raise ValueError(f"shape must be 3 sizes of at least {MIN_SIZE} voxels, got {shape}.")
    return shape


def _along(values: np.ndarray, axis: int) -> np.ndarray:
    """A 1D array as float32, shaped to broadcast along ``axis`` of a 3D array."""
    return np.asarray(values, dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(3)])


def _grid(lo: Sequence[int], hi: Sequence[int], origin: Sequence[float], unit: Sequence[float]) -> list[np.ndarray]:
    """Broadcastable coordinates of the box ``lo:hi``, relative to ``origin`` in ``unit`` voxels per axis."""
    return [_along((np.arange(lo[i], hi[i]) - origin[i]) / unit[i], i) for i in range(3)]


def _separable(grid: np.ndarray, matrices: Sequence[np.ndarray]) -> np.ndarray:
    """Apply one matrix per axis to a small 3D ``grid``: (cx, cy, cz) -> (sx, sy, sz) for (s, c) matrices."""
    wx, wy, wz = matrices
    field = (wx @ grid.reshape(grid.shape[0], -1)).reshape(len(wx), *grid.shape[1:])
    return (wy @ field) @ wz.T


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], scale: float) -> np.ndarray:
    """Smooth Gaussian random field with unit variance and blobs about ``scale`` voxels across.

    White noise on a grid of knots ``scale`` voxels apart is interpolated with a Gaussian kernel, one
    axis at a time as a small matrix product: 10-50x faster than filtering noise at full resolution.
    """
    scale = max(float(scale), 1.0)
    pad = 3  # knots beyond the edges, so the field does not fade there
    matrices = []
    for size in shape:
        knots = (np.arange(int(np.ceil((size - 1) / scale)) + 2 * pad + 1) - pad) * scale
        w = np.exp(-0.5 * ((np.arange(size)[:, None] - knots[None, :]) / scale) ** 2)
        matrices.append((w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32))
    noise = rng.standard_normal([len(w.T) for w in matrices], dtype=np.float32)
    return _separable(noise, matrices)


def _gyri(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, centre: np.ndarray, semi: np.ndarray) -> np.ndarray:
    """Unit-variance field over the box ``lo:hi`` that is constant along rays from the brain centre.

    A sum of random waves over the direction from the centre: its zero level set is a labyrinth of
    sheets standing perpendicular to the brain surface, as sulci do. Evaluated on a coarse grid and
    interpolated linearly, since the waves are many voxels long.
    """
    waves = 24
    frequency = rng.standard_normal((waves, 3))
    frequency *= rng.uniform(18, 30, (waves, 1)) / np.linalg.norm(frequency, axis=1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, waves)
    step = max(1.0, 0.06 * float(np.prod(semi) ** (1 / 3)))
    matrices, axes = [], []
    for i in range(3):
        knots = np.arange(0, hi[i] - lo[i] - 1 + step, step)
        w = np.maximum(0, 1 - np.abs(np.arange(hi[i] - lo[i])[:, None] - knots[None, :]) / step)
        matrices.append((w / w.sum(axis=1, keepdims=True)).astype(np.float32))
        axes.append(_along((lo[i] + knots - centre[i]) / semi[i], i))
    direction = np.stack(np.broadcast_arrays(*axes), axis=-1)
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True) + 1e-6
    field = np.cos(direction @ frequency.T + phase).sum(axis=-1) / np.sqrt(waves / 2)
    return _separable(field.astype(np.float32), matrices)


@dataclass
class _Anatomy:
    """Healthy brain, in a box of the volume that holds it (all arrays are the box's shape)."""

    box: tuple[slice, slice, slice]
    mask: np.ndarray  # bool: inside the brain
    depth: np.ndarray  # 0 on the brain surface, about 1 at its centre, negative outside
    tissue: np.ndarray  # uint8 class: BACKGROUND, CSF, GM or WM
    texture: np.ndarray  # fine unit-variance noise for tissue heterogeneity
    radius: float  # brain radius in voxels: the unit of every anatomical size


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> _Anatomy:
    half = np.array(shape) / 2
    semi = half * BRAIN_FRACTION * rng.uniform(0.92, 1.05, 3)
    centre = (np.array(shape) - 1) / 2 + rng.uniform(-0.03, 0.03, 3) * half
    radius = float(np.prod(semi) ** (1 / 3))
    # The brain never reaches past semi / (1 - BRAIN_DEFORM) (x 1.06 for the wider back), so all
    # full-resolution work happens in that box: a third of a BraTS volume.
    reach = semi * [1.06, 1.0, 1.0] / (1 - BRAIN_DEFORM) + 2
    lo = np.maximum(np.floor(centre - reach), 0).astype(int)
    hi = np.minimum(np.ceil(centre + reach) + 1, shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop = tuple(hi - lo)
    ux, uy, uz = _grid(lo, hi, centre, semi)

    # Egg-shaped like a brain: wider at the back (+y is posterior in LPS), flatter underneath.
    r = np.sqrt((ux / (1 + 0.06 * uy)) ** 2 + uy**2 + (uz * (1 + 0.15 * np.maximum(-uz, 0))) ** 2)
    r = r * (1 + BRAIN_DEFORM * np.tanh(_smooth_noise(rng, crop, 0.45 * radius)))
    depth = 1 - r
    mask = depth > 0

    tissue = np.full(crop, WM, dtype=np.uint8)
    wobble = _smooth_noise(rng, crop, 0.08 * radius)
    # Cortex: an outer band of grey matter holding the white-matter cores of the gyri, cut by sulci.
    # Sulci are the zero level set of a field that varies mostly across the surface, made wavy by
    # 3D noise: a CSF sheet near it, grey matter further out, white matter further still.
    folds = np.abs(0.85 * _gyri(rng, lo, hi, centre, semi) + 0.5 * wobble)
    cortex = depth < 0.22 + 0.04 * wobble
    tissue[(depth < 0.06) | (cortex & (folds < 0.8))] = GM
    tissue[(depth < 0.015) | (cortex & (folds < 0.12) & (depth < 0.2))] = CSF

    # Interhemispheric fissure, wobbling about the midline, lined with grey matter.
    midline = np.abs(ux * semi[0] + 0.02 * radius * _smooth_noise(rng, crop, 0.3 * radius))
    width = max(0.6, 0.012 * radius)
    tissue[(midline < 3 * width) & (depth < 0.42) & (tissue == WM)] = GM
    tissue[(midline < width) & (depth < 0.38)] = CSF

    # Deep grey nuclei; the lateral ventricles, bananas whose ends curve down and apart; the third ventricle.
    size = rng.uniform(0.75, 1.35)
    for side in (-1, 1):
        nuclei = ((ux - 0.24 * side) / 0.11) ** 2 + ((uy - 0.02) / 0.20) ** 2 + ((uz + 0.02) / 0.14) ** 2
        tissue[np.sqrt(nuclei) + 0.15 * wobble < 1] = GM
    for side in (-1, 1):
        bend = 0.35 * uy**2
        ventricle = (
            ((ux - (0.08 + bend) * side) / 0.07) ** 2 + ((uy + 0.02) / 0.42) ** 2 + ((uz - 0.15 + bend) / 0.14) ** 2
        )
        tissue[np.sqrt(ventricle) / size + 0.15 * wobble < 1] = CSF
    tissue[
        (np.abs(ux * semi[0]) < max(0.7, 0.02 * radius)) & (np.abs(uy + 0.05) < 0.14) & (np.abs(uz + 0.06) < 0.14)
    ] = CSF

    tissue[~mask] = BACKGROUND
    texture = _smooth_noise(rng, crop, 0.05 * radius)
    return _Anatomy(box, mask, depth, tissue, texture, radius)


def _add_lesions(rng: np.random.Generator, anatomy: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Paint 1-3 tumours into the tissue map.

    Returns:
        The class map (tissue classes with ED, NCR, ET and BLOOD painted in) and the edema weight,
        how far each ED voxel has moved from its tissue's signal towards the edema signal (1 elsewhere).
    """
    classes = anatomy.tissue.copy()
    weight = np.ones(classes.shape, dtype=np.float32)
    enhancement = rng.choice(["rim", "tiny", "none"], p=[0.85, 0.07, 0.08])
    bleeding = rng.random() < 0.3
    candidates = np.flatnonzero(anatomy.depth > 0.3)  # deep enough for the core to fit in the brain
    for k in range(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1])):
        centre = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], classes.shape))
        core_radius = max(anatomy.radius * rng.uniform(0.10, 0.28) * (rng.uniform(0.45, 0.8) if k else 1.0), 2.0)
        axes = core_radius * rng.uniform(0.8, 1.25, 3)
        edema_reach = rng.uniform(1.2, 2.0)  # edema radius / core radius
        # A rim of at least 1.2 voxels, so small shapes keep a learnable enhancing tumour.
        rim = max(rng.uniform(0.18, 0.40) * core_radius, 1.2) / core_radius

        half = np.ceil(axes * edema_reach * 1.4).astype(int) + 2
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, classes.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        crop = tuple(hi - lo)
        distance = np.sqrt(sum(c**2 for c in _grid(lo, hi, centre, axes)))
        in_brain = anatomy.mask[box]

        # Noise scales the distance field, so outlines are irregular but the centre stays inside.
        core_distance = distance * (1 + 0.18 * _smooth_noise(rng, crop, 0.5 * core_radius))
        core = (core_distance < 1) & in_brain
        et = core & (core_distance > 1 - rim * (1 + 0.4 * _smooth_noise(rng, crop, 0.35 * core_radius)))
        if enhancement == "none" or (enhancement == "tiny" and k > 0):
            et[:] = False
        elif enhancement == "tiny" and et.any():
            spot = np.array(np.unravel_index(rng.choice(np.flatnonzero(et)), crop))
            spot_distance = np.sqrt(sum(c**2 for c in _grid((0, 0, 0), crop, spot, (1, 1, 1))))
            et &= spot_distance <= max(1.5, 0.3 * core_radius)

        # Edema spreads further along white matter than through cortex, and never into CSF.
        edema_distance = distance * (1 + 0.25 * _smooth_noise(rng, crop, 0.6 * core_radius))
        tissue = anatomy.tissue[box]
        reach = edema_reach * np.where(tissue == WM, 1.0, 0.8)
        edema = (edema_distance < reach) & in_brain & (tissue != CSF) & ~core

        painted = classes[box]
        new_edema = edema & np.isin(painted, (CSF, GM, WM))
        painted[new_edema] = ED
        weight[box][new_edema] = np.clip(1.3 - 0.6 * edema_distance / reach, 0.6, 1.0)[new_edema]
        painted[core & ~et & (painted != ET)] = NCR
        painted[et] = ET
        weight[box][core] = 1.0

    if bleeding:
        blood = (classes == NCR) & (_smooth_noise(rng, classes.shape, 0.04 * anatomy.radius) > 1.2)
        classes[blood] = BLOOD
    return classes, weight


def _acquire(
    rng: np.random.Generator, anatomy: _Anatomy, classes: np.ndarray, weight: np.ndarray, shape: tuple[int, int, int]
) -> dict[str, np.ndarray]:
    """Turn the class map into the four scans, each with its own contrast, blur, bias, noise and scale."""
    contrast = CONTRAST * rng.uniform(0.95, 1.05, CONTRAST.shape).astype(np.float32)
    healthy_texture = 1 + TEXTURE[anatomy.tissue] * anatomy.texture
    lesion_texture = 1 + TEXTURE[classes] * anatomy.texture
    images = {}
    for m, name in enumerate(MODALITIES):
        healthy = contrast[anatomy.tissue, m] * healthy_texture
        signal = healthy + weight * (contrast[classes, m] * lesion_texture - healthy)
        # Partial-volume blur of the acquisition, often coarser across slices (the last axis).
        signal = ndimage.gaussian_filter(signal, sigma=rng.uniform(0.4, 0.9, 3) * [1, 1, rng.uniform(1, 1.5)])
        signal *= np.exp(rng.uniform(0.05, 0.2) * _smooth_noise(rng, signal.shape, 0.9 * anatomy.radius))
        inside = signal[anatomy.mask]
        # Magnitude images carry Rician noise: the modulus of signal plus complex Gaussian noise.
        noise = rng.standard_normal((2, inside.size), dtype=np.float32) * np.float32(rng.uniform(0.015, 0.04))
        inside = np.sqrt((inside + noise[0]) ** 2 + noise[1] ** 2)
        scale = np.exp(rng.uniform(np.log(150), np.log(2500)))
        offset = rng.uniform(0.0, 0.25) * scale
        image = np.zeros(shape, dtype=np.int16)
        # At least 1 inside the brain, so the brain mask is exactly where any modality is non-zero.
        image[anatomy.box][anatomy.mask] = np.clip(np.rint(inside * scale + offset), 1, np.iinfo(np.int16).max)
        images[name] = image
    return images


def make_phantom(
    rng: np.random.Generator, shape: Sequence[int] = DEFAULT_SHAPE
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Draw one synthetic BraTS-like case.

    Args:
        rng: Source of all randomness; the same generator state gives the same case.
        shape: Volume size in voxels along L-R, A-P, I-S (1 mm each at the default). Anatomy and
            tumours scale with it. Defaults to BraTS's 240x240x155.

    Returns:
        The images, modality name (``"flair"``, ``"t1"``, ``"t1ce"``, ``"t2"``) -> int16 array, zero
        outside the brain and positive inside; and the uint8 label map with the BraTS 2020 values
        0 background, 1 NCR, 2 ED, 4 ET.

    Raises:
        ValueError: If ``shape`` is not 3 sizes of at least 16 voxels.
    """
    shape = _check_shape(shape)
    anatomy = _anatomy(rng, shape)
    classes, weight = _add_lesions(rng, anatomy)
    images = _acquire(rng, anatomy, classes, weight, shape)
    label = np.zeros(shape, dtype=np.uint8)
    label[anatomy.box] = BRATS_LABEL[classes]
    return images, label


def _nifti_gz(array: np.ndarray, description: str) -> bytes:
    """The .nii.gz bytes of ``array``, gzipped without a timestamp or file name so they are reproducible."""
    affine = brats_affine(array.shape)
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)  # 1: scanner anatomical, as BraTS files have
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = description.encode()[:79]
    return gzip.compress(image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)


def _preview_png(images: dict[str, np.ndarray], label: np.ndarray, title: str) -> bytes:
    """PNG montage of the axial slice with the most tumour: the four modalities and the label on FLAIR."""
    from matplotlib.figure import Figure  # imported here: only previews need matplotlib
    from matplotlib.patches import Patch

    area = (label > 0).sum(axis=(0, 1))
    k = int(np.argmax(area)) if area.any() else label.shape[2] // 2
    # Transposed so rows run anterior to posterior and the patient's right is on the left (radiological view).
    slices = {name: images[name][:, :, k].T for name in MODALITIES}
    windows = {name: np.percentile(s[s > 0], 99.5) if s.any() else 1.0 for name, s in slices.items()}

    figure = Figure(figsize=(15, 3.6), layout="constrained")
    axes = figure.subplots(1, len(MODALITIES) + 1)
    for ax, name in zip(axes, MODALITIES):
        ax.imshow(slices[name], cmap="gray", vmin=0, vmax=windows[name], interpolation="nearest")
        ax.set_title(MODALITY_NAMES[name])
    overlay = np.zeros((*slices["flair"].shape, 4))
    for value, (_, colour) in PREVIEW_COLOURS.items():
        overlay[label[:, :, k].T == value] = (*colour, 0.6)
    axes[-1].imshow(slices["flair"], cmap="gray", vmin=0, vmax=windows["flair"], interpolation="nearest")
    axes[-1].imshow(overlay, interpolation="nearest")
    axes[-1].set_title("label on FLAIR")
    axes[-1].legend(
        handles=[Patch(color=colour, label=f"{value} {name}") for value, (name, colour) in PREVIEW_COLOURS.items()],
        loc="lower right",
        fontsize=8,
        framealpha=0.8,
    )
    for ax in axes:
        ax.set_axis_off()
    figure.suptitle(f"{title}, axial slice {k}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _write_case(
    out: Path, index: int, seed: int, shape: tuple[int, int, int], preview: bool
) -> tuple[str, dict[str, str]]:
    """Generate case ``index`` into ``out`` and return its id and the SHA-256 of each of its files."""
    name = case_id(index)
    folder = out / name
    folder.mkdir(exist_ok=True)
    for stale in [*folder.glob(f".{name}_*.partial*"), *(out / "previews").glob(f".{name}.png.*.partial*")]:
        stale.unlink()  # left by a killed run: ours by name, never read

    images, label = make_phantom(np.random.default_rng([seed, index]), shape)
    description = f"tumorseg synthetic v{PHANTOM_VERSION} seed={seed} case={index}"
    digests = {}
    for modality, array in [*images.items(), ("seg", label)]:
        data = _nifti_gz(array, description)
        path = folder / f"{name}_{modality}.nii.gz"
        write_atomic(path, data)
        digests[path.name] = hashlib.sha256(data).hexdigest()
    if preview:
        (out / "previews").mkdir(exist_ok=True)
        write_atomic(out / "previews" / f"{name}.png", _preview_png(images, label, name))
    return name, digests


def _is_complete(out: Path, name: str, digests: dict[str, str] | None, preview: bool) -> bool:
    expected = {f"{name}_{m}.nii.gz" for m in (*MODALITIES, "seg")}
    if not digests or set(digests) != expected:
        return False
    for file, digest in digests.items():
        path = out / name / file
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return False
    return not preview or (out / "previews" / f"{name}.png").is_file()


def _save_manifest(out: Path, manifest: dict) -> None:
    # Sorted, so that identical runs leave identical manifests whatever order workers finish in.
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())


def _describe(settings: dict) -> str:
    return f"seed={settings['seed']}, shape={'x'.join(map(str, settings['shape']))}, version {settings['version']}"


def _claim_output(out: Path, seed: int, shape: tuple[int, int, int], cases: int) -> dict:
    """Check that ``out`` may receive these cases, record them as planned, and return the manifest.

    Raises:
        FileExistsError: If ``out`` holds anything but what this generator wrote with these settings.
    """
    settings = {"generator": GENERATOR, "version": PHANTOM_VERSION, "seed": seed, "shape": list(shape)}
    path = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose a folder for the synthetic cases.")
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
            found = {key: manifest[key] for key in settings}
            if found["generator"] != GENERATOR:
                raise ValueError(f"written by {found['generator']!r}")
        except (ValueError, KeyError, TypeError) as err:
            raise FileExistsError(f"{path} is not a manifest of {GENERATOR} ({err}); choose another folder.") from err
        if found != settings:
            raise FileExistsError(
                f"{out} holds synthetic cases made with {_describe(found)}, not {_describe(settings)}; "
                f"choose another folder, or delete {out} to regenerate it."
            )
        manifest.setdefault("cases", 0)
        manifest.setdefault("complete", {})
        # Only cases planned by earlier runs may exist: any other case folder came from somewhere else.
        planned = {case_id(i) for i in range(1, manifest["cases"] + 1)}
        foreign = sorted(p.name for p in out.iterdir() if p.name.startswith(CASE_PREFIX) and p.name not in planned)
        if foreign:
            raise FileExistsError(
                f"{out} holds case folders this generator did not write ({', '.join(foreign[:5])}); "
                "move them away or choose another folder."
            )
    else:
        visible = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
        if visible:
            listed = ", ".join(visible[:5]) + (", ..." if len(visible) > 5 else "")
            raise FileExistsError(
                f"{out} is not empty ({listed}) and has no {MANIFEST} from this generator; refusing to mix "
                "synthetic cases with other files. Choose an empty or new folder."
            )
        manifest = {**settings, "cases": 0, "complete": {}}
    manifest["cases"] = max(manifest["cases"], cases)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".{MANIFEST}.*.partial*"):
        stale.unlink()  # left by a killed run
    _save_manifest(out, manifest)
    return manifest


def _run(
    out: Path, indices: list[int], seed: int, shape: tuple[int, int, int], preview: bool, workers: int
) -> Iterator[tuple[str, dict[str, str]]]:
    """Write the cases, yielding ``(case_id, digests)`` as each one finishes."""
    if workers == 1 or len(indices) <= 1:
        for index in indices:
            yield _write_case(out, index, seed, shape, preview)
        return
    # spawn: fresh workers do not inherit the threads (rich, torch, BLAS) of the calling process. Each
    # worker is one single-threaded process per core: BLAS threads on top would only spin and compete.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(min(workers, len(indices)), mp_context=context)
    try:
        with environment(dict.fromkeys(THREAD_VARIABLES, "1")):  # read by the workers as they start
            futures = [pool.submit(_write_case, out, index, seed, shape, preview) for index in indices]
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(cancel_futures=True)


def generate_dataset(
    out: str | os.PathLike,
    cases: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    preview: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> list[Path]:
    """Write ``cases`` synthetic cases into ``out`` in the BraTS 2020 layout.

    Cases already complete in ``out`` from an earlier run with the same settings are kept (see the
    module docstring for the rule); the rest are generated.

    Args:
        out: Dataset folder; created if missing. It must be empty or hold this generator's cases
            made with the same ``seed`` and ``shape``.
        cases: Number of cases, named ``BraTS20_Training_001`` onwards.
        seed: Non-negative dataset seed; case ``i`` uses ``np.random.default_rng([seed, i])``. Defaults to 0.
        shape: Volume size in voxels. Defaults to 240x240x155.
        preview: Also write ``out/previews/<case_id>.png``. Defaults to False.
        workers: Processes generating cases in parallel. A script that passes more than 1 needs the
            usual ``if __name__ == "__main__":`` guard. Defaults to 1.
        progress: Show a progress bar. Defaults to True.

    Returns:
        The case folders, in case order.

    Raises:
        ValueError: If an argument is out of range.
        FileExistsError: If ``out`` holds files this generator did not write with these settings.
    """
    shape = _check_shape(shape)
    for name, value, least in (("cases", cases, 1), ("seed", seed, 0), ("workers", workers, 1)):
        if not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}.")
    out = Path(out)
    manifest = _claim_output(out, seed, shape, cases)
    todo = [
        i
        for i in range(1, cases + 1)
        if not _is_complete(out, case_id(i), manifest["complete"].get(case_id(i)), preview)
    ]

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(f"synthetic cases -> {out}", total=cases, completed=cases - len(todo))
        for name, digests in _run(out, todo, seed, shape, preview, workers):
            # Listed only now that all its files are in place: this is what makes a case complete.
            manifest["complete"][name] = digests
            _save_manifest(out, manifest)
            bar.advance(task)
    return [out / case_id(i) for i in range(1, cases + 1)]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m tumorseg.data.synthetic",
        description="Write synthetic BraTS 2020-like cases (FLAIR, T1, T1ce, T2, seg) for tests and quick starts.",
    )
    parser.add_argument("out", type=Path, help="dataset folder: new, empty, or written by an earlier identical run")
    parser.add_argument("--cases", type=int, required=True, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=list(DEFAULT_SHAPE),
        metavar=("X", "Y", "Z"),
        help="volume size (default: 240 240 155)",
    )
    parser.add_argument("--preview", action="store_true", help="also write OUT/previews/<case_id>.png")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default: 1)")
    add_debug_option(parser)
    args = parser.parse_args(argv)

    def generate() -> None:
        folders = generate_dataset(args.out, args.cases, args.seed, args.shape, args.preview, args.workers)
        print(f"{len(folders)} cases in {args.out}")

    return run_command(generate, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())

"""Synthetic BraTS-like phantoms on a real brain: four MRI modalities and a tumour label map per case.

The healthy brain is the MNI ICBM152 2009 template shipped inside nilearn (``tumorseg.phantoms.anatomy``):
its grey matter, white matter and CSF maps, its T1 texture, ventricles, cerebellum and brainstem,
placed in the BraTS frame (240x240x155 mm, L-P-S axes) through a random rotation, scaling, shift
and smooth warp. Into it grow 1-3 gliomas:

- the tumour pushes the brain aside (mass effect: a volume-preserving radial displacement of the
  anatomy around each focus);
- edema spreads along white matter, much less into cortex, never into CSF;
- the core has irregular necrosis inside an enhancing rim of varying thickness with gaps (the gaps
  are non-enhancing tumour); about 15% of cases have no enhancement at all, 10% a tiny spot;
- 20% of cases are multifocal; blood products sit inside some cores.

The four modalities come from the tissue maps with each sequence's contrasts (against healthy
brain; ~ about that of grey matter):

=========  =====  =====  ======  =====
class      FLAIR  T1     T1ce    T2
=========  =====  =====  ======  =====
CSF        --     --     --      ++
ED         ++     -      -       +
ET         ~      -      ++      ~
NCR        +      --     --      ++
NET        +      -      -       +
blood      +      +      +       ~
vessels    -      ~      ++      --
choroid    ~      ~      ++      +
=========  =====  =====  ======  =====

so a network needs all four modalities to tell the classes apart; vessels and the choroid plexus
enhance like tumour does, so enhancement alone is not tumour. The template's T1 texture modulates
every modality (with the opposite sign on T2 and FLAIR). Then comes what a scanner does:
partial-volume blur, a smooth multiplicative bias field, Rician noise and a random intensity scale
and offset per modality, so intensity normalisation matters.

Resolution: the field of view is always BraTS's 240x240x155 mm; ``shape`` sets the voxels (the
default 240x240x155 is 1 mm; the quick start's 96x96x64 is 2.5x2.5x2.42 mm) and every anatomical and
tumour size is in mm, so a coarse case is the same brain and tumour seen at a lower resolution.

Writing whole datasets (files, manifest, previews, the command line) is ``tumorseg.phantoms.dataset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from tumorseg.labels import MODALITIES
from tumorseg.phantoms.anatomy import CHANNELS, FRAME_CENTRE_MNI, FRAME_MM, load_template

__all__ = [
    "DEFAULT_SHAPE",
    "PHANTOM_VERSION",
    "brats_affine",
    "case_id",
    "check_shape",
    "make_phantom",
    "phantom_spacing",
]

DEFAULT_SHAPE = (240, 240, 155)  # BraTS: 1 mm voxels, axes running R->L, A->P, I->S
MIN_SIZE = 16  # voxels per axis below which the anatomy has no room
GENERATOR = "tumorseg.phantoms"
CASE_PREFIX = "BraTS20_Training_"
# Bump whenever make_phantom's output changes, so folders written by an older version are refused
# instead of being topped up with cases that do not match.
PHANTOM_VERSION = 2

# Classes of the signal model; BRATS_LABEL maps them to the values written to disk.
CSF, GM, WM, ED, NCR, NET, ET, BLOOD, VESSEL, CHOROID, WMH, RESIDUE = range(12)
BRATS_LABEL = np.array([0, 0, 0, 2, 1, 1, 4, 1, 0, 0, 0, 0], dtype=np.uint8)
# Signal of each class per modality (columns in MODALITIES order: flair, t1, t1ce, t2), relative
# to white matter on T1, after the usual clinical appearance of gliomas.
CONTRAST = np.array(
    [
        [0.15, 0.30, 0.32, 1.90],  # CSF: suppressed on FLAIR, the brightest tissue on T2
        [0.95, 0.72, 0.76, 0.85],  # grey matter
        [0.72, 1.00, 1.00, 0.55],  # white matter
        [1.50, 0.68, 0.70, 1.35],  # edema: bright on FLAIR and T2, slightly dark on T1 and T1ce
        [0.95, 0.42, 0.40, 1.60],  # necrosis: dark on T1ce, bright on T2
        [1.30, 0.58, 0.60, 1.40],  # non-enhancing tumour: like edema, darker on T1
        [0.95, 0.66, 1.75, 0.85],  # enhancing tumour: bright on T1ce only, grey-matter-like elsewhere
        [1.10, 1.35, 1.40, 0.70],  # blood products: bright on T1 as well as T1ce, so not enhancement
        [0.45, 0.70, 1.80, 0.35],  # vessels: enhance, flow voids on T2 and FLAIR
        [0.90, 0.75, 1.65, 1.00],  # choroid plexus: enhances
        [1.30, 0.88, 0.90, 1.10],  # white-matter hyperintensities: FLAIR-bright, not tumour
        [1.35, 1.00, 1.50, 0.90],  # dura and vessels left by skull stripping at the brain's edge
    ],
    dtype=np.float32,
)
# How the template's T1 texture carries into each modality: T1-bright nuclei are darker on T2.
TEMPLATE_TEXTURE = np.array([-0.5, 1.0, 1.0, -0.8], dtype=np.float32)
# Relative amplitude of the fine texture: tumours are more heterogeneous than healthy tissue.
TEXTURE = np.array([0.03, 0.03, 0.03, 0.05, 0.10, 0.08, 0.15, 0.10, 0.05, 0.05, 0.05, 0.15], dtype=np.float32)
BRAIN_CENTRE_MNI = np.array([0.0, -17.0, 5.0])  # the middle of the template brain's bounding box
FLIP = np.array([-1.0, -1.0, 1.0])  # L-P-S frame axes -> R-A-S MNI axes


def case_id(index: int) -> str:
    """BraTS 2020 case name of the 1-based case ``index``, e.g. ``BraTS20_Training_001``."""
    return f"{CASE_PREFIX}{index:03d}"


def phantom_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Voxel size in mm of a phantom of ``shape`` voxels: the BraTS field of view over the shape."""
    return tuple(float(f / n) for f, n in zip(FRAME_MM, shape[:3]))


def brats_affine(shape: Sequence[int]) -> np.ndarray:
    """Voxel-to-world affine in LPS orientation (BraTS's) with the phantom's voxel size, volume centre at the origin."""
    spacing = np.array(phantom_spacing(shape))
    affine = np.diag([*(FLIP * spacing), 1.0])
    affine[:3, 3] = (np.asarray(shape[:3], dtype=float) - 1) / 2 * spacing * [1, 1, -1]
    return affine


def check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < MIN_SIZE:
        raise ValueError(f"shape must be 3 sizes of at least {MIN_SIZE} voxels, got {shape}.")
    return shape


def _along(values: np.ndarray, axis: int) -> np.ndarray:
    """A 1D array as float32, shaped to broadcast along ``axis`` of a 3D array."""
    return np.asarray(values, dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(3)])


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


# ------------------------------------------------------------------------------------ anatomy


@dataclass
class _Frame:
    """The output grid: voxel size, and each voxel's position in mm from the frame's centre (L-P-S)."""

    shape: tuple[int, int, int]
    spacing: np.ndarray  # mm per voxel along each axis
    axes: list[np.ndarray]  # broadcastable coordinates in mm

    @classmethod
    def centred(cls, shape: Sequence[int], spacing: Sequence[float]) -> _Frame:
        spacing = np.asarray(spacing, dtype=float)
        axes = [_along((np.arange(n) - (n - 1) / 2) * h, i) for i, (n, h) in enumerate(zip(shape, spacing))]
        return cls(tuple(int(n) for n in shape), spacing, axes)

    @property
    def voxel(self) -> float:
        return float(self.spacing.mean())

    def noise(self, rng: np.random.Generator, shape: Sequence[int], scale_mm: float) -> np.ndarray:
        return _smooth_noise(rng, shape, scale_mm / self.voxel)


@dataclass
class _Placement:
    """Where a case's brain lies in the frame: frame mm -> MNI mm, through a random rotation,
    scaling, shift and smooth warp (the warp field given per frame voxel)."""

    matrix: np.ndarray  # 3x3
    shift: np.ndarray  # mm
    warp: np.ndarray  # (3, *shape) mm

    def to_mni(self, points: np.ndarray, stride: int = 1) -> np.ndarray:
        """MNI coordinates (3, ...) of frame points (3, ...) displaced from the grid by at most a few mm."""
        world = FRAME_CENTRE_MNI.reshape(3, 1, 1, 1) + FLIP.reshape(3, 1, 1, 1) * points
        centred = (world - BRAIN_CENTRE_MNI.reshape(3, 1, 1, 1)).reshape(3, -1)
        moved = (self.matrix @ centred).reshape(points.shape)
        warp = self.warp[:, ::stride, ::stride, ::stride]
        return moved + (BRAIN_CENTRE_MNI + self.shift).reshape(3, 1, 1, 1) + warp


def _placement(rng: np.random.Generator, frame: _Frame) -> _Placement:
    angles = rng.normal(0, [6, 4, 4])  # degrees; pitch (about the L-R axis) varies most in practice
    # brain size (1.3-1.85 litres, the template's 1.9 being large), then its proportions
    scale = rng.uniform(0.88, 1.0) * rng.uniform(0.96, 1.04, 3)
    matrix = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() / scale[None, :]
    shift = rng.normal(0, 3, 3)
    warp = np.stack([rng.uniform(1.5, 3.0) * frame.noise(rng, frame.shape, 30) for _ in range(3)])
    return _Placement(matrix, shift, warp.astype(np.float32))


def _sample(template_maps: np.ndarray, world_to_voxel: np.ndarray, mni: np.ndarray, names: Sequence[str]) -> dict:
    """The named template channels at MNI points (3, ...), linearly interpolated, zero outside."""
    shape = mni.shape[1:]
    voxels = (world_to_voxel[:3, :3] @ mni.reshape(3, -1) + world_to_voxel[:3, 3:4]).astype(np.float32)
    return {
        name: ndimage.map_coordinates(
            template_maps[CHANNELS.index(name)], voxels, order=1, mode="constant", cval=0.0, output=np.float32
        ).reshape(shape)
        for name in names
    }


# ------------------------------------------------------------------------------------ tumours


@dataclass
class _Focus:
    centre: np.ndarray  # frame mm
    radius: float  # of the tumour core, mm
    push: float  # radius of the healthy tissue the core displaced, mm (mass effect)


def _frame_points(frame: _Frame, stride: int = 1) -> np.ndarray:
    axes = [a.reshape(-1)[::stride] for a in frame.axes]
    return np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)


def _plan_foci(rng: np.random.Generator, frame: _Frame, placement: _Placement, template) -> list[_Focus]:
    """1-3 tumour centres in supratentorial white matter, some reaching the cortex."""
    stride = max(1, int(round(4 / frame.voxel)))
    points = _frame_points(frame, stride)
    mni = placement.to_mni(points, stride)
    maps = _sample(template.maps, template.world_to_voxel, mni, ("wm", "csf", "depth"))
    supratentorial = (mni[2] > -5) & (mni[2] < 60)  # above the tentorium, below the vertex
    count = rng.choice([1, 2, 3], p=[0.8, 0.15, 0.05])
    foci: list[_Focus] = []
    for k in range(count):
        radius = rng.uniform(9, 26) if k == 0 else rng.uniform(5, 14)
        # the centre in white matter or near it; the core may reach (and be cut by) the surface
        depth = rng.uniform(0.4, 1.2) * radius
        fits = (maps["wm"] > 0.3) & (maps["csf"] < 0.3) & supratentorial & (maps["depth"] > max(depth, 6))
        for focus in foci:  # apart from the other foci, so each is a lesion of its own
            distance = np.sqrt(((points - focus.centre.reshape(3, 1, 1, 1)) ** 2).sum(axis=0))
            fits &= distance > focus.radius + radius + 12
        candidates = np.flatnonzero(fits)
        if candidates.size == 0:
            if foci:
                break
            # a brain too small for any core: the deepest white matter takes one as big as it allows
            candidates = np.array([int(np.argmax(np.where(maps["wm"] > 0.3, maps["depth"], 0)))])
            radius = max(min(radius, 0.9 * float(maps["depth"].flat[candidates[0]])), 2 * frame.voxel)
        pick = np.unravel_index(candidates[rng.integers(candidates.size)], mni.shape[1:])
        centre = points[(slice(None), *pick)] + rng.uniform(-0.5, 0.5, 3) * stride * frame.spacing
        foci.append(_Focus(centre.astype(np.float32), float(radius), float(rng.uniform(0.3, 0.8) * radius)))
    return foci


def _displace(points: np.ndarray, foci: Sequence[_Focus]) -> np.ndarray:
    """Where each frame point's tissue came from, before the tumours grew.

    A core that grows to push radius ``a`` moves the tissue at distance ``r0`` out to
    ``r = (r0^3 + a^3)^(1/3)``: the volume between them is kept, and the push fades as 1/r^2.
    """
    for focus in foci:
        offset = points - focus.centre.reshape(3, 1, 1, 1)
        r = np.sqrt((offset**2).sum(axis=0))
        r0 = np.cbrt(np.maximum(r**3 - focus.push**3, 0.0))
        points = focus.centre.reshape(3, 1, 1, 1) + offset * (r0 / np.maximum(r, 1e-6))
    return points


def _box(frame: _Frame, centre: np.ndarray, reach_mm: float) -> tuple[slice, ...]:
    index = [np.argmin(np.abs(a.reshape(-1) - c)) for a, c in zip(frame.axes, centre)]
    half = np.ceil(reach_mm / frame.spacing).astype(int) + 2
    return tuple(slice(max(i - h, 0), min(i + h + 1, n)) for i, h, n in zip(index, half, frame.shape))


def _paint_tumours(
    rng: np.random.Generator, frame: _Frame, foci: Sequence[_Focus], maps: dict
) -> tuple[np.ndarray, np.ndarray]:
    """The class map's tumour classes (-1 where healthy) and the blending weight of each lesion voxel."""
    classes = np.full(frame.shape, -1, dtype=np.int8)
    weight = np.zeros(frame.shape, dtype=np.float32)
    brain = maps["brain"] > 0.5
    enhancement = rng.choice(["rim", "tiny", "none"], p=[0.75, 0.10, 0.15])
    for k, focus in enumerate(foci):
        edema_reach = rng.uniform(6, 30)  # mm beyond the core, along white matter
        box = _box(frame, focus.centre, 1.35 * focus.radius + 1.3 * edema_reach + 4)
        crop = tuple(s.stop - s.start for s in box)
        offsets = [a.reshape(-1)[s] - c for a, s, c in zip(frame.axes, box, focus.centre)]
        axes = focus.radius * rng.uniform(0.8, 1.25, 3)
        distance = np.sqrt(sum(_along(o / r, i) ** 2 for i, (o, r) in enumerate(zip(offsets, axes))))
        in_brain = brain[box]

        # Irregular outlines: noise scales the distance field, the centre stays inside.
        core_distance = distance * (1 + 0.2 * frame.noise(rng, crop, 0.5 * focus.radius))
        core = (core_distance < 1) & in_brain
        if not core.any():  # a core thinner than a voxel: keep its centre voxel
            core[np.unravel_index(np.argmin(core_distance + 1e3 * ~in_brain), crop)] = True
        # Rim of varying thickness (at least about a voxel) around irregular necrosis.
        thickness = max(rng.uniform(0.15, 0.6) * focus.radius, 1.2 * frame.voxel) / focus.radius
        rim = thickness * (1 + 0.6 * frame.noise(rng, crop, 0.4 * focus.radius))
        solid = focus.radius < 14 and rng.random() < 0.35  # small tumours may not be necrotic yet
        necrosis = core & (core_distance < 1 - rim) & (not solid)
        ring = core & ~necrosis
        # Gaps in the enhancing rim are non-enhancing tumour.
        gaps = frame.noise(rng, crop, 0.5 * focus.radius) > NormalDist().inv_cdf(1 - rng.uniform(0.001, 0.35))
        et = ring & ~gaps
        if enhancement == "none" or (enhancement == "tiny" and k > 0):
            et[:] = False
        elif enhancement == "tiny" and et.any():
            spot = np.array(np.unravel_index(rng.choice(np.flatnonzero(et)), crop))
            steps = [(np.arange(n) - c) * h for n, c, h in zip(crop, spot, frame.spacing)]
            spot_distance = np.sqrt(sum(_along(d, i) ** 2 for i, d in enumerate(steps)))
            et &= spot_distance <= max(1.5 * frame.voxel, 0.3 * focus.radius)

        # Edema: within reach of the core, the reach long in white matter and short in cortex; not in
        # CSF; only what connects to the core.
        from_core = ndimage.distance_transform_edt(~core, sampling=frame.spacing)
        wm = maps["wm"][box]
        reach = edema_reach * (0.2 + 0.9 * wm) * (1 + 0.3 * frame.noise(rng, crop, 12))
        edema = (from_core < reach) & in_brain & (maps["csf"][box] < 0.5) & ~core
        parts, _ = ndimage.label(edema | core)
        edema &= np.isin(parts, np.unique(parts[core]))

        painted, weights = classes[box], weight[box]
        new_edema = edema & (painted < 0)
        painted[new_edema] = ED
        weights[new_edema] = np.clip(1.25 - 0.6 * from_core / np.maximum(reach, 1e-3), 0.45, 1.0)[new_edema]
        painted[core & ~et & (painted != ET)] = NET
        painted[necrosis & (painted != ET)] = NCR
        painted[et] = ET
        weights[core] = 1.0

    if rng.random() < 0.25:
        blood = (classes == NCR) & (frame.noise(rng, frame.shape, 4) > 1.2)
        classes[blood] = BLOOD
    return classes, weight


def _vessels(rng: np.random.Generator, frame: _Frame, maps: dict) -> np.ndarray:
    """Vessel fraction per voxel: curves where two smooth fields both cross zero, in the CSF of
    sulci and cisterns near the surface. Widened at coarse resolutions and faded to match, as
    partial volume would."""
    a, b = (frame.noise(rng, frame.shape, 14) for _ in range(2))
    widen = max(1.0, frame.voxel / 1.2)
    width = 0.07 * widen
    vessels = np.exp(-(a**2 + b**2) / (2 * width**2)) / widen
    return vessels * np.clip((maps["csf"] - 0.2) / 0.4, 0, 1) * (maps["depth"] < 20)


def _hyperintensities(rng: np.random.Generator, frame: _Frame, maps: dict) -> np.ndarray:
    """White-matter hyperintensities of small-vessel disease: caps and bands around the ventricles
    and scattered spots in deep white matter, from none to many. Bright on FLAIR like edema, but
    labelled healthy, as BraTS's annotators leave them."""
    load = rng.uniform(0, 1) ** 2
    bands = maps["periventricular"] * np.clip(load * (1.2 + frame.noise(rng, frame.shape, 10)), 0, 1)
    spots = frame.noise(rng, frame.shape, 4) > 3.2 - 1.2 * load
    return np.clip(bands + 0.8 * spots * (maps["wm"] > 0.6), 0, 1)


def _residue(rng: np.random.Generator, frame: _Frame, maps: dict) -> np.ndarray:
    """Patches of dura and vessels that skull stripping leaves on the brain's edge: bright on
    T1ce and FLAIR, in a shell a few mm thick."""
    shell = np.clip(1 - maps["depth"] / rng.uniform(1.5, 4), 0, 1) * (maps["brain"] > 0.5)
    patches = frame.noise(rng, frame.shape, 15) > rng.uniform(0.3, 2.5)
    return shell * patches


# ------------------------------------------------------------------------------------ images


def _acquire(
    rng: np.random.Generator, frame: _Frame, maps: dict, classes: np.ndarray, weight: np.ndarray, mimics: dict
) -> dict[str, np.ndarray]:
    """The four scans from the tissue maps, the healthy structures that mimic tumour (class -> fraction
    of each voxel) and the tumours, each with its own contrast, blur, bias, noise and scale."""
    contrast = CONTRAST * rng.uniform(0.92, 1.08, CONTRAST.shape).astype(np.float32)
    # How far each lesion class stands out from grey matter varies between tumours and scanners
    # (contrast dose and timing, field strength): from subtle to marked.
    lesions = [ED, NCR, NET, ET, BLOOD]
    distinct = rng.uniform(0.5, 1.3, (len(lesions), 1)).astype(np.float32)
    contrast[lesions] = contrast[GM] + (contrast[lesions] - contrast[GM]) * distinct
    mask = maps["brain"] > 0.5
    texture = frame.noise(rng, frame.shape, 1.6)
    lesion = np.maximum(classes, 0)
    images = {}
    for m, name in enumerate(MODALITIES):
        healthy = maps["csf"] * contrast[CSF, m] + maps["gm"] * contrast[GM, m] + maps["wm"] * contrast[WM, m]
        healthy /= np.maximum(maps["csf"] + maps["gm"] + maps["wm"], 1e-3)
        healthy *= (1 + TEMPLATE_TEXTURE[m] * maps["texture"]) * (1 + TEXTURE[GM] * texture)
        healthy += maps["choroid"] * (contrast[CHOROID, m] - healthy)
        for cls, fraction in mimics.items():
            healthy += fraction * (contrast[cls, m] - healthy)
        target = contrast[lesion, m] * (1 + TEXTURE[lesion] * texture)
        signal = np.where(classes >= 0, healthy + weight * (target - healthy), healthy)
        # Partial-volume blur of the acquisition, often coarser across slices (the last axis).
        sigma_mm = rng.uniform(0.4, 0.9, 3) * [1, 1, rng.uniform(1, 1.5)]
        signal = ndimage.gaussian_filter(signal, sigma=sigma_mm / frame.spacing)
        signal *= np.exp(rng.uniform(0.05, 0.3) * frame.noise(rng, frame.shape, 60))
        inside = signal[mask]
        # Magnitude images carry Rician noise: the modulus of signal plus complex Gaussian noise.
        noise = rng.standard_normal((2, inside.size), dtype=np.float32) * np.float32(rng.uniform(0.015, 0.04))
        inside = np.sqrt((inside + noise[0]) ** 2 + noise[1] ** 2)
        scale = np.exp(rng.uniform(np.log(150), np.log(2500)))
        offset = rng.uniform(0.0, 0.25) * scale
        image = np.zeros(frame.shape, dtype=np.int16)
        # At least 1 inside the brain, so the brain mask is exactly where any modality is non-zero.
        image[mask] = np.clip(np.rint(inside * scale + offset), 1, np.iinfo(np.int16).max)
        images[name] = image
    return images


def make_phantom(
    rng: np.random.Generator, shape: Sequence[int] = DEFAULT_SHAPE
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Draw one synthetic BraTS-like case.

    Args:
        rng: Source of all randomness; the same generator state gives the same case.
        shape: Volume size in voxels along L-R, A-P, I-S over BraTS's 240x240x155 mm field of view
            (see ``phantom_spacing``). Defaults to BraTS's 240x240x155 (1 mm).

    Returns:
        The images, modality name (``"flair"``, ``"t1"``, ``"t1ce"``, ``"t2"``) -> int16 array, zero
        outside the brain and positive inside; and the uint8 label map with the BraTS 2020 values
        0 background, 1 NCR/NET, 2 ED, 4 ET.

    Raises:
        ValueError: If ``shape`` is not 3 sizes of at least 16 voxels.
        tumorseg.phantoms.anatomy.TemplateError: If nilearn's template is not installed.
    """
    shape = check_shape(shape)
    spacing = np.array(phantom_spacing(shape))
    frame = _Frame.centred(shape, spacing)
    template = load_template(frame.voxel)
    placement = _placement(rng, frame)
    foci = _plan_foci(rng, frame, placement, template)
    mni = placement.to_mni(_displace(_frame_points(frame), foci))
    maps = _sample(template.maps, template.world_to_voxel, mni, CHANNELS)
    # BraTS's brain masks end below the cerebellum with a flat cut through the brainstem, a few
    # slices above the volume's first
    bottom = frame.axes[2].min() + rng.uniform(4, 12)
    maps["brain"] *= (mni[2] > rng.uniform(-60, -50)) & (frame.axes[2] > bottom)
    del mni
    classes, weight = _paint_tumours(rng, frame, foci, maps)
    mimics = {
        VESSEL: _vessels(rng, frame, maps),
        WMH: _hyperintensities(rng, frame, maps),
        RESIDUE: _residue(rng, frame, maps),
    }
    images = _acquire(rng, frame, maps, classes, weight, mimics)
    label = np.where(classes >= 0, BRATS_LABEL[np.maximum(classes, 0)], 0).astype(np.uint8)
    label[maps["brain"] <= 0.5] = 0
    return images, label

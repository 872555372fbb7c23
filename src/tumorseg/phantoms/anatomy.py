"""The healthy brain of the phantoms: the MNI ICBM152 2009 template, placed in the BraTS frame.

The template (T1 and grey- and white-matter probability maps, 1 mm, 197x233x189) ships inside the
``nilearn`` wheel, so it is read from the installed package and nothing is downloaded; nilearn
itself is never imported. From it this module derives, once per process and resolution:

- ``brain``, ``gm``, ``wm`` and ``csf`` (the brain minus grey and white matter) probabilities;
- ``texture``: the T1 template relative to what its tissue maps predict, which keeps the deep
  grey nuclei, the brainstem and the cerebellum's own contrast;
- ``choroid``: choroid plexus in the atria of the lateral ventricles;
- ``depth``: distance to the brain's surface in mm;
- ``periventricular``: white matter within about 8 mm of the lateral ventricles, where the
  white-matter hyperintensities of older brains gather.

A case samples these maps through a random rotation, scaling, shift and smooth warp, on the BraTS
frame (240x240x155 mm, L-P-S axes) at any resolution; the maps are blurred first to the target
voxel size so that coarse grids do not alias.

Licence of the template: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University. Permission to use, copy, modify, and distribute
this software and its documentation for any purpose and without fee is hereby granted, provided that
the above copyright notice appear in all copies. The authors and McGill University make no
representations about the suitability of this software for any purpose. It is provided "as is"
without express or implied warranty.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["CHANNELS", "FRAME_MM", "TEMPLATE_ENV", "Template", "TemplateError", "load_template", "template_folder"]

FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
CHANNELS = ("brain", "gm", "wm", "csf", "texture", "choroid", "depth", "periventricular")
FRAME_MM = (240.0, 240.0, 155.0)  # the BraTS field of view
TEMPLATE_ENV = "TUMORSEG_TEMPLATE_DIR"
# MNI point at the centre of the BraTS frame: puts the brain where BraTS (SRI24) brains lie, the
# vertex about 14 mm below the top slice and the lower cerebellum on the bottom slices.
FRAME_CENTRE_MNI = np.array([0.0, -10.0, 18.0])


class TemplateError(RuntimeError):
    """The template files cannot be found or read."""


def template_folder() -> Path:
    """The folder that holds the ICBM152 2009 files: ``$TUMORSEG_TEMPLATE_DIR`` if set (e.g. the three
    files alone, on a machine without nilearn), else the installed nilearn package's data folder."""
    override = os.environ.get(TEMPLATE_ENV)
    if override:
        folder = Path(override).expanduser()
        missing = [name for name in FILES.values() if not (folder / name).is_file()]
        if missing:
            raise TemplateError(
                f"{TEMPLATE_ENV}={folder} lacks {', '.join(missing)}; point it at a folder with the three files."
            )
        return folder
    spec = importlib.util.find_spec("nilearn")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise TemplateError(
            "the phantoms' anatomy is the MNI ICBM152 template shipped inside nilearn, which is not "
            "installed; run `pip install nilearn` (or reinstall tumorseg)."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise TemplateError(
            f"{folder} lacks {', '.join(missing)}; reinstall nilearn (`pip install --force-reinstall nilearn`)."
        )
    return folder


@dataclass(frozen=True)
class Template:
    """The template's derived maps, ``maps[c]`` for channel ``CHANNELS[c]`` (float32, template grid)."""

    maps: np.ndarray  # (channels, x, y, z)
    world_to_voxel: np.ndarray  # 4x4: MNI mm (RAS) -> template voxel

    def channel(self, name: str) -> np.ndarray:
        return self.maps[CHANNELS.index(name)]


def _read(folder: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    path = folder / FILES[key]
    try:
        image = nib.load(path)
        return np.asarray(image.dataobj, dtype=np.float32) / 255.0, image.affine
    except Exception as err:  # a damaged install: say which file
        raise TemplateError(f"cannot read {path} ({err}); reinstall nilearn.") from err


@functools.lru_cache(maxsize=1)
def _template_1mm() -> Template:
    folder = template_folder()
    t1, affine = _read(folder, "t1")
    gm, _ = _read(folder, "gm")
    wm, _ = _read(folder, "wm")
    brain = np.maximum((t1 > 0).astype(np.float32), np.clip(gm + wm, 0, 1))
    brain = ndimage.binary_fill_holes(brain > 0.5).astype(np.float32)
    gm, wm = gm * brain, wm * brain
    csf = np.clip(brain - gm - wm, 0, 1)

    # Texture: the T1 template over a least-squares fit of it from the tissue maps.
    inside = brain > 0.5
    design = np.stack([gm[inside], wm[inside], csf[inside]], axis=1)
    weights, *_ = np.linalg.lstsq(design, t1[inside], rcond=None)
    texture = np.zeros_like(t1)
    texture[inside] = np.clip(t1[inside] / np.maximum(design @ weights, 0.05) - 1, -0.3, 0.3)

    # Ventricles: CSF far from the brain's surface; the choroid plexus lies in their bodies and
    # atria (MNI y from -45 to -20 mm, above the temporal horns), as a thin tissue seam.
    depth = _distance_to_zero(inside, box_of=inside, margin=1)
    mni = [np.arange(n, dtype=np.float32) + affine[i, 3] for i, n in enumerate(t1.shape)]
    y = mni[1][None, :, None]
    z = mni[2][None, None, :]
    ventricle = (csf > 0.5) & (depth > 14)
    labels, count = ndimage.label(ventricle)
    sizes = ndimage.sum(ventricle, labels, range(1, count + 1))
    ventricle = np.isin(labels, 1 + np.flatnonzero(sizes > 2000))
    region = (y > -45) & (y < -20) & (z > 0) & (z < 30)
    floor = ventricle & region & ~np.roll(ventricle, 3, axis=2)  # the lowest 3 mm of each column
    choroid = np.clip(1.5 * ndimage.gaussian_filter(floor.astype(np.float32), 0.7), 0, 1) * (csf > 0.3)

    near = _distance_to_zero(~ventricle, box_of=ventricle, margin=8) < 8
    periventricular = ndimage.gaussian_filter((near & ~ventricle).astype(np.float32), 2.0) * wm

    maps = np.empty((len(CHANNELS), *t1.shape), np.float32)  # filled in place: no float64 stack
    for c, m in enumerate([brain, gm, wm, csf, texture, choroid, depth, periventricular]):
        maps[c] = m
    return Template(maps, np.linalg.inv(affine))


def _distance_to_zero(mask: np.ndarray, box_of: np.ndarray, margin: int) -> np.ndarray:
    """``distance_transform_edt(mask)`` computed on the bounding box of ``box_of`` grown by ``margin``
    voxels (the whole 1 mm grid costs ~3 s of every process's start); beyond the box 0 where ``mask``
    is 0, +inf where it is 1. Exact where the distance is below ``margin`` if every zero of ``mask``
    lies in the box, and everywhere if ``mask`` is 0 around the box."""
    box = tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in np.nonzero(box_of))
    out = np.where(mask, np.inf, 0.0)
    out[box] = ndimage.distance_transform_edt(mask[box])
    return out


@functools.lru_cache(maxsize=2)
def load_template(voxel_mm: float = 1.0) -> Template:
    """The template's maps, blurred for sampling on a grid of ``voxel_mm`` voxels (rounded to 0.1 mm).

    Raises:
        TemplateError: If nilearn or its template files are missing or unreadable.
    """
    template = _template_1mm()
    # A Gaussian as wide as a box of the target size, less the template's own 1 mm.
    sigma = 0.4 * np.sqrt(max(round(float(voxel_mm), 1) ** 2 - 1.0, 0.0))
    if sigma < 0.2:
        return template
    maps = np.stack([ndimage.gaussian_filter(m, sigma) for m in template.maps])
    return Template(maps, template.world_to_voxel)

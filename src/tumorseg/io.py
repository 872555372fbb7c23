"""File I/O shared by every command: atomic writes, the NIfTI reader (named errors, headers checked
before any voxel is read, grid check, label validation), the NIfTI writer that keeps the input's
space, and the cache root.

Anything this package writes goes through :func:`atomic_write` or :func:`atomic_path`: a temporary
file in the target's folder, flushed to disk, then renamed over the target. A run killed at any
moment, or a full disk, leaves the previous file whole, never a truncated one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

# what nibabel raises for a missing, truncated or corrupt file
READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, OverflowError, zlib.error)
# largest affine difference (mm) between files still taken as one voxel grid
AFFINE_TOLERANCE = 1e-3
# Headers are checked against these before any voxel is read, so that a corrupt one ends in a
# message instead of a huge allocation: a brain MRI has some 10^7 voxels of 0.5-7 mm.
MAX_VOXELS = 1024**3
VOXEL_SIZE_RANGE = (1e-3, 1e3)  # mm
MAX_COORDINATE = 1e6  # mm from the scanner's origin
# deflate cannot expand data more than 1032-fold, which bounds what a .gz file can hold
MAX_GZIP_RATIO = 1032


# ------------------------------------------------------------------------------------------- writing


def _suffixes(path: Path) -> str:
    # keeps ".nii.gz" whole so that writers which infer the format from the name still do
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` (same extension) to write to; renamed onto ``path`` when
    the block ends without an error, removed otherwise. For writers that take a file name
    (``nib.save``, ``np.save``, ``torch.save``, ``fig.savefig``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".partial{_suffixes(path)}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as file:
            os.fsync(file.fileno())
        # mkstemp's files are owner-only; give the permissions the umask gives new files
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """``open(path, mode)`` that writes the file whole or not at all (``mode``: ``"w"`` or ``"wb"``)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write takes mode 'w' or 'wb', got {mode!r}.")
    with atomic_path(path) as tmp:
        kwargs = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        with open(tmp, mode, **kwargs) as file:
            yield file
            file.flush()


def write_atomic(path: str | os.PathLike, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ``path`` whole or not at all; returns ``path``."""
    with atomic_write(path, "w" if isinstance(content, str) else "wb") as file:
        file.write(content)
    return Path(path)


def write_nifti(array: np.ndarray, path: str | os.PathLike, affine: np.ndarray, like: nib.Nifti1Header | None = None):
    """Write ``array`` as NIfTI, atomically, in the space of the input it was computed from: the
    same affine, with ``like``'s qform and sform codes and voxel sizes when a header is given."""
    image = nib.Nifti1Image(array, affine)
    if like is not None:
        image.set_qform(affine, code=int(like["qform_code"]) or 1)
        image.set_sform(affine, code=int(like["sform_code"]) or 1)
        image.header.set_zooms(tuple(like.get_zooms()[:3]) + image.header.get_zooms()[3:])
    image.set_data_dtype(array.dtype)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)


# ------------------------------------------------------------------------------------------- reading


class NiftiError(ValueError):
    """A NIfTI file that cannot be used: ``path`` and ``reason`` (what is wrong and what to do)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def read_nifti(path: str | os.PathLike, *, finite: bool = False) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The image and its voxels (scaled as the header says, not copied).

    The header is checked before any voxel is read (see :func:`header_problem`); with ``finite``,
    NaN and inf voxels are refused too.

    Raises:
        NiftiError: the file cannot be read, or its header or voxels cannot be used; the message
            says which and what to do.
    """
    what_to_do = "it is missing, truncated or corrupt: re-extract or re-download it"
    try:
        image = nib.load(path)
        problem = header_problem(image)
        data = None if problem else np.asanyarray(image.dataobj)
    except READ_ERRORS as error:
        raise NiftiError(path, f"cannot read the file ({error}); {what_to_do}") from error
    except MemoryError as error:
        raise NiftiError(
            path, f"its {_voxel_count(image.shape):,} voxels do not fit in memory; free memory or use a larger machine"
        ) from error
    problem = problem or (non_finite(data, "the image") if finite else None)
    if problem:
        raise NiftiError(path, problem)
    return image, data


def header_problem(image: nib.spatialimages.SpatialImage) -> str | None:
    """What makes the header of a loaded ``image`` unusable, or None: a shape without
    voxels or larger than ``MAX_VOXELS``, more voxel bytes than the file can hold, voxels that are
    not real numbers (complex, RGB), or an affine or voxel sizes that no scan has (not finite,
    singular, outside ``VOXEL_SIZE_RANGE`` or ``MAX_COORDINATE``)."""
    corrupt = "the header is corrupt: re-extract or re-download the file"
    shape = tuple(int(n) for n in image.shape)
    if not shape or min(shape) < 1:
        return f"the header gives the shape {shape}, which holds no voxel; {corrupt}"
    if _voxel_count(shape) > MAX_VOXELS:
        return f"the header gives the shape {shape}, over {MAX_VOXELS:,} voxels; {corrupt}"
    dtype = image.get_data_dtype()
    if dtype.kind not in "biuf" or dtype.fields is not None:
        return f"the voxels are of type {dtype}, not real numbers; tumorseg reads scalar images: re-export it"
    # where the voxels lie: the loaded header's copy no longer says, the array proxy does
    proxy = image.dataobj
    data_file = getattr(proxy, "file_like", None)
    if isinstance(data_file, (str, os.PathLike)) and hasattr(proxy, "offset"):
        end = int(proxy.offset) + _voxel_count(shape) * dtype.itemsize
        size = os.path.getsize(data_file)
        gzipped = str(data_file).endswith(".gz")
        if end > (MAX_GZIP_RATIO * size if gzipped else size):
            holds = f"a {size:,}-byte {'gzip ' if gzipped else ''}file"
            return (
                f"cannot read the file (its header places {end:,} bytes of voxels in {holds}, which cannot hold them); "
                "it is truncated or corrupt: re-extract or re-download it"
            )
    affine = np.asarray(image.affine, dtype=np.float64)
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    low, high = VOXEL_SIZE_RANGE
    if not np.isfinite(affine).all() or np.abs(affine[:3, 3]).max() > MAX_COORDINATE:
        return f"the affine holds non-finite or huge values ({_matrix(affine)}); {corrupt}"
    if sizes.min() < low or sizes.max() > high or np.linalg.cond(affine[:3, :3]) > 1e6:
        return (
            f"the affine ({_matrix(affine)}) maps voxels to no valid grid (voxel sizes {low:g}-{high:g} mm); {corrupt}"
        )
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
    if not (np.isfinite(zooms).all() and zooms.min() >= low and zooms.max() <= high):
        return f"the voxel sizes {tuple(zooms.tolist())} are not finite or not within {low:g}-{high:g} mm; {corrupt}"
    return None


def non_finite(data: np.ndarray, where: str) -> str | None:
    """What to do about the NaN and inf voxels in ``data`` (described as ``where``), or None."""
    if data.dtype.kind != "f":
        return None
    count = data.size - int(np.count_nonzero(np.isfinite(data)))
    if not count:
        return None
    return f"{count} non-finite (NaN or inf) voxels in {where}; replace them (e.g. by 0) or re-export it"


def _voxel_count(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=object))


def _matrix(affine: np.ndarray) -> str:
    return "; ".join(" ".join(f"{value:.4g}" for value in row) for row in affine[:3])


def grid_mismatch(image: nib.Nifti1Image, reference_path: str | os.PathLike, reference: nib.Nifti1Image) -> str | None:
    """Why ``image`` does not lie on the voxel grid of ``reference``, or None when it does."""
    name = Path(reference_path).name
    what_to_do = f"all files of a case must share one voxel grid: resample this file onto the grid of {name}"
    shape, reference_shape = image.shape[:3], reference.shape[:3]
    if shape != reference_shape:
        return f"shape {shape} differs from {reference_shape} of {name}; {what_to_do}"
    difference = float(np.abs(image.affine - reference.affine).max())
    if difference > AFFINE_TOLERANCE:
        return f"affine differs from {name}'s by up to {difference:.3g} mm; {what_to_do}"
    return None


def label_voxels(data: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """The voxels of a label file as integers: a 3D map (a trailing axis of 1 dropped), finite, and
    whole numbers when stored as floats. :class:`NiftiError` saying what is wrong otherwise."""
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NiftiError(path, f"expected a 3D label map, found shape {data.shape}; use the dataset's label file")
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise NiftiError(path, "the label map holds non-finite (NaN or inf) values; re-export or re-download it")
        rounded = np.rint(data)
        # float storage is fine, fractions are not: they come from resampling with interpolation
        if np.abs(data - rounded).max(initial=0) > 1e-3:
            raise NiftiError(
                path, "the label map holds fractional values; resample label maps with nearest-neighbour interpolation"
            )
        return rounded.astype(np.int64)
    if data.dtype.kind not in "iub":
        raise NiftiError(path, f"label maps must hold integers, found {data.dtype}")
    return data


def read_label(path: str | os.PathLike) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The image and the integer voxels of a 3D label file (see :func:`label_voxels`)."""
    image, data = read_nifti(path)
    return image, label_voxels(data, path)


def spacing(image: nib.Nifti1Image) -> tuple[float, float, float]:
    """Voxel size in mm along the three spatial axes."""
    return tuple(float(size) for size in image.header.get_zooms()[:3])


# ------------------------------------------------------------------------------------------- caching


def cache_root() -> Path:
    """Where tumorseg keeps what it can rebuild (preprocessed volumes, downloaded checkpoints):
    ``$TUMORSEG_CACHE``, else ``$XDG_CACHE_HOME/tumorseg``, else ``~/.cache/tumorseg``."""
    if os.environ.get("TUMORSEG_CACHE"):
        return Path(os.environ["TUMORSEG_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tumorseg"

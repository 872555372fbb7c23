"""Patch and window sizes: how a config gives them, and what ``auto`` means.

A size is one edge (a cube) or three edges (x, y, z), in voxels. The training patch
(``data.patch_size``) and the sliding window (``inference.roi_size``, which follows the patch
unless set) are both read by :func:`size3`, so every reader accepts and refuses the same values.
``data.patch_size=auto`` (and ``auto`` batch size and samples per volume) depend on the network and
are resolved by ``tumorseg.training.train.resolve_auto_sizes`` with :func:`auto_patch_edge` and
:func:`auto_counts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

Size3 = tuple[int, int, int]

# the patch edge of real data (conf/data/brats.yaml) and the window of InferenceConfig() alone
DEFAULT_PATCH_SIZE = 128
AUTO = "auto"
# data.patch_size=auto: the network's smallest input, but at least 32 voxels per axis
AUTO_PATCH_FLOOR = 32
# samples per volume and batch size for auto: these spans // the patch's longest edge, at least 1
AUTO_SAMPLES_SPAN = 128
AUTO_BATCH_SPAN = 64


def _is_edge(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def size3(value: Any, option: str = "patch_size") -> Size3:
    """One edge or three edges (x, y, z) -> ``(x, y, z)``, each a positive integer.

    Args:
        value: an int, or a sequence of three ints (a list, tuple or OmegaConf list).
        option: the option's name, for the error message, e.g. ``"data.patch_size"``.

    Raises:
        ValueError: naming ``option``, for anything else (0, two edges, a string, ``auto``, which
            only ``resolve_auto_sizes`` turns into a number since it depends on the network).
    """
    if _is_edge(value):
        edges: tuple = (value,) * 3
    elif isinstance(value, Sequence) and not isinstance(value, str):
        edges = tuple(value)
    else:
        edges = ()
    if len(edges) != 3 or not all(_is_edge(e) and e >= 1 for e in edges):
        hint = " (auto is resolved from the network when training starts)" if value == AUTO else ""
        raise ValueError(f"`{option}` must be a positive integer or three of them (x, y, z), got {value!r}{hint}.")
    return tuple(int(e) for e in edges)


def format_size(size: Size3) -> str:
    """A size as it is written on the command line: ``32`` for a cube, else ``[32,32,64]``."""
    return str(size[0]) if len(set(size)) == 1 else "[" + ",".join(map(str, size)) + "]"


def auto_patch_edge(min_input_size: int) -> int:
    """``data.patch_size=auto``: the network's smallest input, at least ``AUTO_PATCH_FLOOR``
    (AR-UNet and PSPNet: 32, LinkNet: 64), so that ``model=`` alone picks a patch that suits it."""
    return max(AUTO_PATCH_FLOOR, int(min_input_size))


def auto_counts(patch_size: Any, option: str = "data.patch_size") -> tuple[int, int]:
    """``(samples_per_volume, batch_size)`` for ``auto``: 128 and 64 // the patch's longest edge,
    at least 1 (4 and 2 for 32^3, 2 and 1 for 64^3): a larger patch already covers more of each
    case, so every network takes the same number of optimizer steps per epoch, each on more voxels."""
    edge = max(size3(patch_size, option))
    return max(1, AUTO_SAMPLES_SPAN // edge), max(1, AUTO_BATCH_SPAN // edge)

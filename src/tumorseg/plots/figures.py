"""Writing and rendering figures: ``save_figure`` (an atomic PNG) and ``figure_to_array`` (an RGB
array, e.g. for ``wandb.Image``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tumorseg.io import atomic_path

DPI = 120


def save_figure(fig: Figure, path: str | Path, *, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG atomically (``tumorseg.io.atomic_path``): a reader never sees a
    half-written file, and a failed save leaves the previous file as it was. The figure's canvas is
    left as it is.

    Args:
        fig: the figure.
        path: destination; missing parent folders are created.
        dpi: resolution. Defaults to 120.

    Returns:
        ``path`` as a Path.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


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

"""Phantoms beside real exams: the same slices of each modality and the label, one row per case.

    python experiments/phantoms/gallery.py [--real ../shared/data/real2020 ../shared/data/BraTS-GLI-00001-000]
                                          [--cases 3] [--seed 0] [--out experiments/phantoms/results]

Writes ``axial.png`` (the axial slice with the most tumour) and ``coronal.png`` (the coronal slice
through the tumour's centre, which shows the cerebellum and brainstem) into ``--out``: first the
real exams (each in its own layout, found like any dataset), then ``--cases`` phantoms at 1 mm and
one at the quick start's 96x96x64 (2.5 mm). Real exams that are missing are left out with a note.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from tumorseg.cli import add_debug_option, run_command
from tumorseg.data.layouts import discover
from tumorseg.data.reading import load_case
from tumorseg.labels import CLASS_COLOURS, MODALITIES, MODALITY_NAMES, to_internal
from tumorseg.phantoms import make_phantom, phantom_spacing
from tumorseg.plots.figures import save_figure
from tumorseg.plots.views import overlay_rgba, window

ROOT = Path(__file__).resolve().parents[2]

DEFAULT_REAL = [ROOT.parent / "shared" / "data" / "real2020", ROOT.parent / "shared" / "data" / "BraTS-GLI-00001-000"]


def real_rows(folders: list[Path]) -> list[tuple[str, np.ndarray, np.ndarray | None, tuple]]:
    rows = []
    for folder in folders:
        if not folder.exists():
            print(f"{folder} not found: left out")
            continue
        for case in discover(folder).cases:
            volume = load_case(case)
            rows.append((f"real: {case.case_id}", volume.image, volume.label, volume.spacing))
    return rows


def phantom_rows(cases: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray | None, tuple]]:
    rows = []
    for i in range(1, cases + 2):
        shape = (240, 240, 155) if i <= cases else (96, 96, 64)
        images, label = make_phantom(np.random.default_rng([seed, i]), shape)
        image = np.stack([images[m].astype(np.float32) for m in MODALITIES])
        spacing = phantom_spacing(shape)
        internal = to_internal(label, "brats2020")
        rows.append((f"phantom {i} ({spacing[0]:g} mm)", image, internal, spacing))
    return rows


def slice_index(image: np.ndarray, label: np.ndarray | None, axis: int) -> int:
    """The slice with the most tumour; without a label, the one with the most FLAIR-bright voxels."""
    other = tuple(a for a in range(3) if a != axis)
    if label is not None and label.any():
        weights = np.count_nonzero(label, axis=other)
    else:
        flair = image[0]
        weights = np.count_nonzero(flair > np.percentile(flair[flair > 0], 99), axis=other)
    if axis == 1:  # coronal: through the tumour's centre rather than its widest part
        return int(round(np.average(np.arange(len(weights)), weights=weights)))
    return int(np.argmax(weights))


def gallery(rows, axis: int) -> Figure:
    columns = len(MODALITIES) + 1
    figure = Figure(figsize=(2.6 * columns, 2.7 * len(rows)), layout="constrained")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, (name, image, label, spacing) in enumerate(rows):
        k = slice_index(image, label, axis)
        # mm aspect, so 2.5 mm and 1 mm cases look alike
        in_plane = [s for a, s in enumerate(spacing) if a != axis]
        aspect = in_plane[1] / in_plane[0]
        origin = "upper" if axis == 2 else "lower"
        for c, modality in enumerate(MODALITIES):
            scan = np.take(image[c], k, axis=axis).T
            low, high = window(scan)
            axes[r, c].imshow(scan, cmap="gray", vmin=low, vmax=high, aspect=aspect, origin=origin)
            if r == 0:
                axes[r, c].set_title(MODALITY_NAMES[modality])
        flair = np.take(image[0], k, axis=axis).T
        low, high = window(flair)
        axes[r, -1].imshow(flair, cmap="gray", vmin=low, vmax=high, aspect=aspect, origin=origin)
        if label is not None:
            axes[r, -1].imshow(overlay_rgba(np.take(label, k, axis=axis).T), aspect=aspect, origin=origin)
        else:
            axes[r, -1].text(0.5, 0.05, "no label", color="white", ha="center", transform=axes[r, -1].transAxes)
        if r == 0:
            axes[r, -1].set_title("label on FLAIR")
        axes[r, 0].set_ylabel(name, fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    figure.legend(
        handles=[Patch(color=colour, label=name) for value, (name, colour) in CLASS_COLOURS.items() if value],
        loc="outside lower center",
        ncol=3,
    )
    return figure


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, nargs="*", default=DEFAULT_REAL, help="real case folders or datasets")
    parser.add_argument("--cases", type=int, default=3, help="phantoms at 1 mm (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (default: 0)")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "phantoms" / "results")
    add_debug_option(parser)
    args = parser.parse_args(argv)

    def draw() -> None:
        rows = real_rows(args.real) + phantom_rows(args.cases, args.seed)
        for axis, name in ((2, "axial"), (1, "coronal")):
            path = save_figure(gallery(rows, axis), args.out / f"{name}.png", dpi=80)
            print(f"wrote {path}")

    return run_command(draw, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())

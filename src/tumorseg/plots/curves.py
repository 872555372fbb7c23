"""The paper's training figure: Dice loss and Dice score per epoch, train and validation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tumorseg.labels import BRATS2023, LabelSet, label_set
from tumorseg.plots.figures import save_figure


def region_keys(labels: LabelSet | str = BRATS2023) -> dict[str, str]:
    """The validation Dice of each region of the label set -> its legend, e.g. ``val/dice_wt`` -> ``val WT``."""
    labels = label_set(labels)
    return {f"val/dice_{r}": f"val {labels.region_names[r]}" for r in labels.regions}


REGION_KEYS = region_keys(BRATS2023)


def plot_loss_score(
    history: Mapping[str, Mapping[int, float]],
    out_path: str | Path,
    *,
    title: str | None = None,
    loss_key: str = "dice_loss",
    score_key: str = "dice_mean",
    region_keys: Mapping[str, str] = REGION_KEYS,
) -> Path:
    """The paper's training figure: Dice loss (left) and Dice score (right) per epoch, train and val.

    Args:
        history: metric name -> {epoch: value}, as ``epoch_history`` gives.
        out_path: PNG to write (atomically, at 120 dpi).
        title: figure title. Defaults to none.
        loss_key: metric under ``train/`` and ``val/`` drawn on the left. Defaults to "dice_loss".
        score_key: metric under ``train/`` and ``val/`` drawn on the right. Defaults to "dice_mean".
            ``val/dice_wt``, ``val/dice_tc`` and ``val/dice_et`` are added as thin lines when present.
        region_keys: metric -> legend of those thin lines. Defaults to ``REGION_KEYS`` (WT, TC, ET);
            ``region_keys(label_set)`` gives another label set's.

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
            for (key, label), colour in zip(region_keys.items(), ("C2", "C3", "C4", "C5", "C6", "C7", "C8")):
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

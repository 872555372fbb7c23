"""Figures of a training run and of a segmentation, and the reader of the log they are drawn from.

* ``history``: ``epoch_history`` reads Lightning's ``CSVLogger`` files into ``{metric: {epoch: value}}``;
* ``curves``: ``plot_loss_score`` draws that history as the paper's two panels, Dice loss and Dice
  score per epoch;
* ``views``: ``segmentation_panel`` (one slice of a case: every modality, then the ground truth and
  the prediction over the first one) and ``orthogonal_views`` (three planes through one voxel);
* ``figures``: ``save_figure`` (an atomic PNG) and ``figure_to_array`` (an RGB array for ``wandb.Image``).

Only ``matplotlib.figure.Figure`` and ``FigureCanvasAgg`` are used, never pyplot, so nothing here
selects a backend or touches the figures of a user's interactive session.

    history = epoch_history(["logs/version_0/metrics.csv", "logs/version_1/metrics.csv"])
    plot_loss_score(history, "figures/arunet_loss_score.png", title="AR-UNet 3D")
    save_figure(segmentation_panel(image, pred, label, title="BraTS20_Training_001"), "figures/case_001.png")
"""

from tumorseg.plots.curves import REGION_KEYS, plot_loss_score
from tumorseg.plots.figures import DPI, figure_to_array, save_figure
from tumorseg.plots.history import History, epoch_history
from tumorseg.plots.views import (
    AXIS_NAMES,
    CLASS_COLOURS,
    MODALITY_TITLES,
    OVERLAY_ALPHA,
    orthogonal_views,
    segmentation_panel,
)

__all__ = [
    "AXIS_NAMES",
    "CLASS_COLOURS",
    "DPI",
    "MODALITY_TITLES",
    "OVERLAY_ALPHA",
    "REGION_KEYS",
    "History",
    "epoch_history",
    "figure_to_array",
    "orthogonal_views",
    "plot_loss_score",
    "save_figure",
    "segmentation_panel",
]

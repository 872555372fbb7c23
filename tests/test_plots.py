"""The training-history reader (CSVLogger), the loss/score figure and the segmentation panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from tumorseg import plots
from tumorseg.plots import (
    epoch_history,
    figure_to_array,
    plot_loss_score,
    save_figure,
    segmentation_panel,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.strip() + "\n")
    return path


# --------------------------------------------------------------------------------------------
# epoch_history


def test_epoch_history_sparse_rows_last_row_of_an_epoch_wins(tmp_path):
    path = write_csv(
        tmp_path / "metrics.csv",
        """
epoch,step,train/dice_loss_step,train/dice_loss,val/dice_loss,val/dice_mean
0,9,0.9,,,
0,19,0.8,,,
0,19,,,0.7,0.30
0,19,,0.85,,
1,29,0.6,,,
1,39,0.5,,,
1,39,,,0.55,0.45
1,39,,,0.5,0.5
1,39,,0.55,,
""",
    )
    history = epoch_history([path])
    assert list(history) == ["train/dice_loss_step", "train/dice_loss", "val/dice_loss", "val/dice_mean"]
    assert history["train/dice_loss_step"] == {0: 0.8, 1: 0.5}
    assert history["train/dice_loss"] == {0: 0.85, 1: 0.55}
    assert history["val/dice_loss"] == {0: 0.7, 1: 0.5}
    assert history["val/dice_mean"] == {0: 0.3, 1: 0.5}
    assert epoch_history(path) == history  # a single path, not read letter by letter


def test_epoch_history_later_files_override_and_missing_files_are_skipped(tmp_path):
    first = write_csv(
        tmp_path / "version_0/metrics.csv",
        """
epoch,step,val/dice_mean,train/dice_loss
0,9,0.2,0.9
1,19,0.3,0.8
2,29,0.35,0.75
""",
    )
    # resumed from the epoch-1 checkpoint after a crash in epoch 2, with a column the first lacked
    second = write_csv(
        tmp_path / "version_1/metrics.csv",
        """
epoch,step,val/dice_mean,val/dice_et
2,29,0.4,0.1
3,39,0.5,0.2
""",
    )
    missing = tmp_path / "version_2/metrics.csv"
    history = epoch_history([first, missing, second])
    assert history["val/dice_mean"] == {0: 0.2, 1: 0.3, 2: 0.4, 3: 0.5}
    assert history["train/dice_loss"] == {0: 0.9, 1: 0.8, 2: 0.75}
    assert history["val/dice_et"] == {2: 0.1, 3: 0.2}
    # the other order: the older file's values win
    assert epoch_history([second, first])["val/dice_mean"] == {0: 0.2, 1: 0.3, 2: 0.35, 3: 0.5}


def test_epoch_history_no_file_exists(tmp_path):
    paths = [tmp_path / "a/metrics.csv", tmp_path / "b/metrics.csv"]
    with pytest.raises(FileNotFoundError, match="b/metrics.csv"):
        epoch_history(paths)


def test_epoch_history_reads_lightning_csvlogger_files(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="run")
    # what the Trainer passes: "epoch" added to every logged dict, one call per logging point
    logger.log_metrics({"train/dice_loss_step": 0.9, "epoch": 0}, step=0)
    logger.log_metrics({"val/dice_loss": 0.7, "val/dice_mean": 0.3, "epoch": 0}, step=1)
    logger.log_metrics({"train/dice_loss": 0.8, "epoch": 0}, step=1)
    logger.log_metrics({"val/dice_loss": 0.6, "val/dice_mean": 0.4, "epoch": 1}, step=3)
    logger.save()
    history = epoch_history([Path(logger.log_dir) / "metrics.csv"])
    assert history == {
        "train/dice_loss_step": {0: 0.9},
        "val/dice_loss": {0: 0.7, 1: 0.6},
        "val/dice_mean": {0: 0.3, 1: 0.4},
        "train/dice_loss": {0: 0.8},
    }


# --------------------------------------------------------------------------------------------
# plot_loss_score and save_figure


def assert_png(path: Path, width: int, height: int) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert imread(path).shape[:2] == (height, width)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_plot_loss_score_writes_png(tmp_path):
    epochs = range(5)
    history = {
        "train/dice_loss": {e: 1 - 0.1 * e for e in epochs},
        "val/dice_loss": {e: 1 - 0.08 * e for e in epochs},
        "train/dice_mean": {e: 0.1 * e for e in epochs},
        "val/dice_mean": {e: 0.08 * e for e in epochs},
        "val/dice_wt": {e: 0.1 * e for e in epochs},
        "val/dice_et": {e: 0.05 * e for e in epochs},
    }
    out = plot_loss_score(history, tmp_path / "figures/loss.png", title="AR-UNet 3D")
    assert out == tmp_path / "figures/loss.png"
    assert_png(out, 11 * plots.DPI, round(4.2 * plots.DPI))


def test_plot_loss_score_single_epoch_and_epoch_suffix(tmp_path):
    # val only, one epoch, the train loss under Lightning's on_step+on_epoch name
    history = {"val/dice_mean": {0: 0.4}, "train/dice_loss_epoch": {0: 0.7}, "lr": {0: 1e-3}}
    out = plot_loss_score(history, tmp_path / "loss.png")
    assert_png(out, 11 * plots.DPI, round(4.2 * plots.DPI))
    # replaces an existing file
    before = out.read_bytes()
    plot_loss_score({"val/dice_mean": {0: 0.4, 1: 0.6}}, out)
    assert out.read_bytes() != before


def test_plot_loss_score_without_its_series(tmp_path):
    with pytest.raises(ValueError, match=r"metrics found: lr, val/dice_wt"):
        plot_loss_score({"val/dice_wt": {0: 0.5}, "lr": {0: 0.1}}, tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()
    with pytest.raises(ValueError, match="metrics found: none"):
        plot_loss_score({}, tmp_path / "loss.png")


def test_save_figure_failure_keeps_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "fig.png"
    out.write_bytes(b"old")
    fig = Figure()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, out)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


# --------------------------------------------------------------------------------------------
# segmentation_panel and figure_to_array


def make_case(channels: int = 4, shape: tuple[int, int, int] = (16, 12, 10)):
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (channels, *shape)).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[4:8, 3:6, 2] = 2  # 12 voxels in axial slice 2
    label[3:9, 2:8, 6] = 2  # 36 voxels in axial slice 6: the largest
    label[5:7, 4:6, 6] = 3
    label[6, 5, 6] = 1
    pred = np.zeros(shape, dtype=np.uint8)
    pred[2:10, 2:10, 4] = 3  # the prediction's largest slice is 4
    return image, pred, label


def shown(ax) -> np.ndarray:
    return np.asarray(ax.images[0].get_array())


def test_segmentation_panel_shows_the_slice_with_most_tumour():
    image, pred, label = make_case()
    fig = segmentation_panel(image, pred, label, title="case 1")
    axes = fig.axes
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes] == [
        "FLAIR",
        "T1",
        "T1ce",
        "T2",
        "ground truth on FLAIR",
        "prediction on FLAIR",
    ]
    assert fig.get_suptitle() == "case 1, axial slice 6 of 10"
    for c in range(4):
        np.testing.assert_array_equal(shown(axes[c]), image[c, :, :, 6].T)  # transposed
    assert axes[0].images[0].origin == "upper"  # LPS axial: anterior at the top
    # the overlays: ET voxels of the label in its colour, none where the prediction has no tumour
    truth, prediction = axes[4].images[1].get_array(), axes[5].images[1].get_array()
    assert truth.shape == (12, 16, 4)
    np.testing.assert_allclose(truth[4, 5, :3], plots.CLASS_COLOURS[3][1])
    np.testing.assert_allclose(truth[5, 6, :3], plots.CLASS_COLOURS[1][1])
    assert (truth[..., 3] > 0).sum() == 36
    assert (prediction[..., 3] == 0).all()
    assert [t.get_text() for t in axes[-1].get_legend().get_texts()] == ["NCR", "ED", "ET"]


def test_segmentation_panel_other_axis_index_and_prediction_only():
    image, pred, label = make_case()
    fig = segmentation_panel(image, pred, label, axis=0)
    assert fig.get_suptitle() == "sagittal slice 4 of 16"  # x = 4-7 carry 6 + 3 voxels each: the first wins
    assert fig.axes[0].images[0].origin == "lower"
    np.testing.assert_array_equal(shown(fig.axes[1]), image[1, 4].T)
    fig = segmentation_panel(image, pred, label, index=3)
    assert fig.get_suptitle() == "axial slice 3 of 10"
    # no label, or an empty one: the prediction chooses the slice
    assert segmentation_panel(image, pred).get_suptitle() == "axial slice 4 of 10"
    assert segmentation_panel(image, pred, np.zeros_like(label)).get_suptitle() == "axial slice 4 of 10"
    # no tumour anywhere: the middle slice
    assert segmentation_panel(image, np.zeros_like(pred)).get_suptitle() == "axial slice 5 of 10"


def test_segmentation_panel_flair_only():
    image, pred, label = make_case(channels=1)
    fig = segmentation_panel(image, pred, title="FLAIR model")
    assert [ax.get_title() for ax in fig.axes] == ["FLAIR", "prediction on FLAIR"]
    assert fig.get_suptitle() == "FLAIR model, axial slice 4 of 10"
    fig = segmentation_panel(image, pred, label, modalities=("t2",))
    assert [ax.get_title() for ax in fig.axes] == ["T2", "ground truth on T2", "prediction on T2"]


def test_segmentation_panel_windowing_ignores_outliers_and_background():
    image, pred, label = make_case(channels=1)
    image[0, :, :, 6] = 0  # background
    image[0, 2:14, 2:10, 6] = 100
    image[0, 2, 2, 6] = 1e6  # one hot voxel
    fig = segmentation_panel(image, pred, label)
    low, high = fig.axes[0].images[0].get_clim()
    assert low == pytest.approx(100) and high < 1e5


def test_segmentation_panel_shape_errors():
    image, pred, label = make_case()
    with pytest.raises(ValueError, match=r"image \(4, 16, 12, 10\), pred \(16, 12, 9\)"):
        segmentation_panel(image, pred[..., :9])
    with pytest.raises(ValueError, match=r"pred \(16, 12, 10\), label \(16, 12, 9\)"):
        segmentation_panel(image, pred, label[..., :9])
    with pytest.raises(ValueError, match=r"image \(16, 12, 10\)"):
        segmentation_panel(image[0], pred)
    with pytest.raises(ValueError, match="out of range"):
        segmentation_panel(image, pred, index=10)


def test_figure_to_array():
    image, pred, label = make_case()
    fig = segmentation_panel(image, pred, label)
    array = figure_to_array(fig)
    width, height = fig.get_size_inches() * fig.dpi
    assert array.shape == (round(height), round(width), 3)
    assert array.dtype == np.uint8 and array.flags.c_contiguous
    assert array.min() == 0 and array.max() == 255  # drawn: black background of the scans, white margins
    # a figure without an Agg canvas goes through a PNG, with the same result and its canvas kept
    plain = Figure(figsize=(2, 1), dpi=50)
    plain.add_subplot().plot([0, 1], [0, 1])
    canvas = plain.canvas
    assert figure_to_array(plain).shape == (50, 100, 3)
    assert plain.canvas is canvas

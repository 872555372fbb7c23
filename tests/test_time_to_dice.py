"""experiments/quickstart/time_to_dice.py (seconds until a Dice is reached, spread over seeds) and
experiments/output_stride/resolution_ceiling.py (the Dice a prediction at output stride s can reach at most)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from train_helpers import ROOT

sys.path[:0] = [str(ROOT / "experiments" / "quickstart"), str(ROOT / "experiments" / "output_stride")]
import resolution_ceiling  # noqa: E402
import time_to_dice  # noqa: E402

HEADER = "epoch,step,time/elapsed_s,train/loss,val/dice_mean,val/dice_wt,val/dice_tc,val/dice_et\n"


def write_log(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for epoch, seconds, mean in rows:
        lines.append(f"{epoch},{epoch * 10},,0.5,,,,\n")  # a training row: no validation
        lines.append(f"{epoch},{epoch * 10},{seconds},,{mean},{mean + 0.01},{mean - 0.01},{mean}\n")
    path.write_text("".join(lines))
    return path


def test_seconds_to_each_threshold_final_best_and_spread(tmp_path):
    curves = {
        ("arunet3d", 1): [(1, 30.0, 0.40), (3, 60.0, 0.81), (5, 90.0, 0.86)],
        ("arunet3d", 2): [(1, 31.0, 0.55), (3, 62.0, 0.84), (5, 93.0, 0.83)],
        ("pspnet3d", 1): [(1, 20.0, 0.30), (3, 40.0, 0.45)],
    }
    results = []
    for (model, seed), rows in curves.items():
        curve = time_to_dice.read_curve(write_log(tmp_path / f"{model}{seed}" / "metrics.csv", rows))
        assert [p["epoch"] for p in curve] == [r[0] for r in rows]  # training rows skipped
        results.append({"model": model, "seed": seed, "wall_s": 100.0, "curve": curve})
    table = {(r["model"], r["seed"]): r for r in time_to_dice.summarise(results, [0.5, 0.8, 0.85])}

    first = table[("arunet3d", 1)]
    assert (first["t0.5"], first["t0.8"], first["t0.85"]) == (60.0, 60.0, 90.0)
    assert first["final"] == pytest.approx(0.86) and first["best"] == pytest.approx(0.86)
    assert first["final_tc"] == pytest.approx(0.85) and first["fit_s"] == 90.0
    second = table[("arunet3d", 2)]
    assert second["t0.5"] == 31.0 and second["t0.85"] is None  # never reached
    assert second["final"] == pytest.approx(0.83) and second["best"] == pytest.approx(0.84)
    assert table[("pspnet3d", 1)]["t0.5"] is None

    text = time_to_dice.table(time_to_dice.summarise(results, [0.5, 0.8, 0.85]), [0.5, 0.8, 0.85])
    assert "| arunet3d | 2 | 31 | 62 | never | 0.830 | 0.840 |" in text
    # spread of the final values over seeds, and the worst drop of a final value below its run's best
    assert "| arunet3d | 0.845 | 0.830 | 0.860 | 0.030 | -0.010 |" in text


def test_thresholds_must_be_fractions(capsys):
    with pytest.raises(SystemExit) as exit_info:
        time_to_dice.parse_args(["--thresholds", "0.5", "1.5"])
    assert exit_info.value.code == 2
    assert "--thresholds must lie in (0, 1]" in capsys.readouterr().err


def test_resolution_ceiling_by_hand():
    """A tumour filling one 8^3 cell of the coarse grid exactly: an enhancing shell of 1 voxel around
    a 6^3 necrotic core. At stride 8 the cell averages are 1 (WT, TC) and 296/512 (ET); upsampled
    linearly along each axis with the weights below, a voxel keeps a region where the product of
    its three weights times the cell average exceeds 0.5, so the shell (at most
    0.578 * 0.9375^3 = 0.48) vanishes."""
    label = np.zeros((24, 24, 24), dtype=np.uint8)
    label[8:16, 8:16, 8:16] = 3
    label[9:15, 9:15, 9:15] = 1
    full = resolution_ceiling.ceiling(label, 1)
    assert torch.equal(full, torch.from_numpy(label.astype(np.int64)))

    coarse = resolution_ceiling.ceiling(label, 8).numpy()
    # 1-D weight of the middle cell at voxels 8..15: source coordinate (i + 0.5) / 8 - 0.5
    w = np.array([0.5625, 0.6875, 0.8125, 0.9375, 0.9375, 0.8125, 0.6875, 0.5625])
    expected = np.zeros(label.shape, dtype=bool)
    expected[8:16, 8:16, 8:16] = np.einsum("i,j,k->ijk", w, w, w) > 0.5
    assert np.array_equal(coarse > 0, expected)  # WT drawn
    assert np.array_equal(coarse == 1, expected)  # TC painted over it; no ET anywhere
    assert not (coarse == 3).any()


def test_resolution_ceiling_on_phantoms(tmp_path, capsys):
    from tumorseg.phantoms import generate_dataset

    generate_dataset(tmp_path / "ph", cases=2, seed=3, shape=(48, 48, 32), workers=1, progress=False)
    assert resolution_ceiling.main([str(tmp_path / "ph"), "--strides", "1", "8"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 1.000 | 1.000 | 1.000 | 1.000 |" in out
    stride8 = [line for line in out.splitlines() if line.startswith("| 8 |")][0]
    assert float(stride8.split("|")[-2]) < 0.9

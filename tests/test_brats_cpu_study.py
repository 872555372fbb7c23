"""experiments/brats_cpu/run.py: the real-data study's curves (a killed run's and its resumption's
joined), its tables and figure, from CSV logs and results written by hand."""

from __future__ import annotations

import json
import sys

import pytest
from test_time_to_dice import write_log
from train_helpers import ROOT

sys.path.insert(0, str(ROOT / "experiments" / "brats_cpu"))
import run as study  # noqa: E402


def test_a_resumed_run_continues_the_curve_of_the_killed_one(tmp_path):
    run_root = tmp_path / "arunet3d-phantom-fold0"
    write_log(run_root / "runs" / "2026-01-01_10-00-00" / "csv" / "metrics.csv", [(4, 100.0, 0.5), (9, 200.0, 0.6)])
    # killed during epoch 12; the resumed process counts its seconds from its own start, and the
    # epoch it validates again (9, from last.ckpt of epoch 9) is the killed run's
    write_log(run_root / "runs" / "2026-01-01_11-00-00" / "csv" / "metrics.csv", [(9, 5.0, 0.61), (14, 90.0, 0.7)])
    curve = study.curve_of(run_root)
    assert [(p["epoch"], p["seconds"], p["mean"]) for p in curve] == [
        (4, 100.0, 0.5),
        (9, 200.0, 0.6),
        (14, 290.0, 0.7),
    ]
    assert curve[-1]["tc"] == pytest.approx(0.69)
    assert study.first_reached(curve, 0.6) == 200.0 and study.first_reached(curve, 0.8) is None


def test_report_tables_means_and_figure(tmp_path):
    def result(model, start, fold, finals, source):
        curve = [{"epoch": 4, "seconds": 50.0, "mean": 0.55, "wt": 0.6, "tc": 0.5, "et": 0.55},
                 {"epoch": 9, "seconds": 100.0 + fold, **finals}]  # fmt: skip
        summary = {"model": {r: {"dice": {"mean": v}} for r, v in zip(("wt", "tc", "et"), source)}}
        return {"model": model, "start": start, "fold": fold, "curve": curve, "source": summary}

    finals = {"mean": 0.8, "wt": 0.9, "tc": 0.8, "et": 0.7}
    results = [
        result("arunet3d", "phantom", 0, finals, (0.9, 0.8, 0.7)),
        result("arunet3d", "phantom", 1, {**finals, "mean": 0.6, "wt": 0.7}, (0.8, 0.6, 0.5)),
        result("arunet3d", "scratch", 0, {**finals, "mean": 0.5}, (0.7, 0.5, 0.4)),
    ]
    args = study.parse_args(["--out", str(tmp_path / "out"), "--results", str(tmp_path / "committed")])
    study.report(results, args)
    text = (tmp_path / "out" / "results.md").read_text()
    assert (
        "| arunet3d | phantom | 0 | 50 | 100 | 100 | 0.800 | 0.900 | 0.800 | 0.700 | 0.900 | 0.800 | 0.700 | 100 |"
        in text
    )
    assert "| arunet3d | phantom | 2 | 0.700 | 0.800 | 0.800 | 0.700 | 0.850 | 0.700 | 0.600 |" in text  # fold means
    assert "| arunet3d | scratch | 1 | 0.500 |" in text
    assert json.loads((tmp_path / "committed" / "results.json").read_text())[0]["fold"] == 0
    assert (tmp_path / "committed" / "time_to_dice.png").stat().st_size > 0

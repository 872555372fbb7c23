"""experiments/brats/epoch_time.py: expected time per epoch from gpu_train_check.sh's measurements."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from train_helpers import ROOT

sys.path.insert(0, str(ROOT / "experiments" / "brats"))
import epoch_time  # noqa: E402

RATES = {"arunet3d": 20.0, "linknet3d": 50.0, "pspnet3d": 40.0}  # patches/s
CASE_S = {"arunet3d": 6.0, "linknet3d": 3.0, "pspnet3d": 2.4}  # sliding window, s per case


def fake_check(out: Path) -> Path:
    """What gpu_train_check.sh leaves: one-epoch CSV logs, step.jsonl and infer.jsonl."""
    for network, rate in RATES.items():
        csv_dir = out / f"train_{network}" / "csv"
        csv_dir.mkdir(parents=True)
        (csv_dir / "metrics.csv").write_text(f"epoch,step,train/patches_per_s\n0,9,{rate / 2}\n0,19,{rate}\n0,20,\n")
    steps = [{"model": n, "mode": "bf16", "device_name": "NVIDIA H100 80GB HBM3"} for n in RATES]
    infer = [
        {"model": n, "backend": b, "s": CASE_S[n] * (1 if b == "monai" else 9)}
        for n in RATES
        for b in ("monai", "torchio")
    ]
    (out / "step.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    (out / "infer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in infer))
    return out


def test_expected_times_by_hand(tmp_path, capsys):
    out = fake_check(tmp_path / "check")
    rows = {r["network"]: r for r in epoch_time.estimate(out, 1000, 250, 4, 5, 300)}
    a = rows["arunet3d"]
    assert a["train_min"] == pytest.approx(1000 * 4 / 20.0 / 60)  # 3.33 min: the last measured rate
    assert a["val_min"] == pytest.approx(250 * 6.0 / 60)  # MONAI's time, not TorchIO's
    assert a["epoch_min"] == pytest.approx(1000 * 4 / 20.0 / 60 + 250 * 6.0 / 60 / 5)
    assert a["run_h"] == pytest.approx(a["epoch_min"] * 300 / 60)
    assert a["test_min"] == pytest.approx(250 * 6.0 * 8 / 60)
    assert a["card"] == "NVIDIA H100 80GB HBM3"
    assert epoch_time.main([str(out), "--train-cases", "1000"]) == 0
    printed = capsys.readouterr().out
    assert "| arunet3d | NVIDIA H100 80GB HBM3 | 20.0 | 6.00 | 3.3 | 25.0 | 8.3 | 41.7 | 200.0 |" in printed


def test_missing_measurements_say_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="run experiments/gpu_train_check.sh first"):
        epoch_time.estimate(tmp_path, 1000, 250, 4, 5, 300)

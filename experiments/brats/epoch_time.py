"""Expected wall time of the modern recipe on one GPU, from what ``experiments/gpu_train_check.sh``
measured on that card: the end-to-end training rate (patches/s of a ``brats_<net>`` epoch, data
loading included) and the sliding-window time per full-size case (``benchmark.py infer``).

Usage::

    python experiments/brats/epoch_time.py OUT_DIR [--train-cases 1001] [--val-cases 250]
        [--samples-per-volume 4] [--val-every 5] [--epochs 300]

OUT_DIR is the folder ``gpu_train_check.sh`` wrote. The defaults describe one fold of the 5-fold
cross-validation on the 1251 BraTS 2021 training cases with the ``brats_<net>`` experiments:
an epoch draws ``samples_per_volume`` patches from each training case, and validation runs over
the fold's validation cases every ``check_val_every_n_epoch`` epochs. Printed: per network, the
card, minutes per training epoch, minutes per validation, the mean minutes per epoch with
validation spread over the epochs, hours for the whole run, and minutes to score the fold's
validation cases at test time with the 8 mirrorings.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tumorseg.cli import positive_int

NETWORKS = ("arunet3d", "linknet3d", "pspnet3d")
MIRRORINGS = 8


def _jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {path}: {err}; run experiments/gpu_train_check.sh first.") from err


def training_rate(out: Path, network: str) -> float:
    """The last end-to-end ``train/patches_per_s`` of the network's one-epoch run: its CSV log in the
    run directory, or the copy ``train_<net>.csv`` that a committed results folder keeps."""
    path = out / f"train_{network}" / "csv" / "metrics.csv"
    if not path.is_file() and (out / f"train_{network}.csv").is_file():
        path = out / f"train_{network}.csv"
    try:
        with path.open() as f:
            values = [float(r["train/patches_per_s"]) for r in csv.DictReader(f) if r.get("train/patches_per_s")]
    except OSError as err:
        raise SystemExit(f"error: {path}: {err}; run experiments/gpu_train_check.sh first.") from err
    if not values:
        raise SystemExit(f"error: {path} holds no train/patches_per_s; was the run long enough to measure?")
    return values[-1]


def estimate(out: Path, train_cases: int, val_cases: int, spv: int, val_every: int, epochs: int) -> list[dict]:
    infer = {r["model"]: r for r in _jsonl(out / "infer.jsonl") if r.get("backend") == "monai"}
    steps = {r["model"]: r for r in _jsonl(out / "step.jsonl")}
    rows = []
    for network in NETWORKS:
        if network not in infer:
            raise SystemExit(f"error: {out / 'infer.jsonl'} has no MONAI sliding-window time of {network}.")
        rate = training_rate(out, network)
        case_s = float(infer[network]["s"])
        train_min = train_cases * spv / rate / 60
        val_min = val_cases * case_s / 60
        mean_min = train_min + val_min / val_every
        rows.append({
            "network": network,
            "card": (steps.get(network) or infer[network]).get("device_name", "?"),
            "patches_per_s": rate,
            "case_s": case_s,
            "train_min": train_min,
            "val_min": val_min,
            "epoch_min": mean_min,
            "run_h": mean_min * epochs / 60,
            "test_min": val_min * MIRRORINGS,
        })  # fmt: skip
    return rows


def table(rows: Sequence[dict], train_cases: int, val_cases: int, spv: int, val_every: int, epochs: int) -> str:
    lines = [
        f"Expected time, one fold: {train_cases} training cases x {spv} patches per epoch, {val_cases} validation "
        f"cases every {val_every} epochs, {epochs} epochs.",
        "",
        "| network | card | patches/s | s/case (window) | train min/epoch | validation min | mean min/epoch "
        "| run h | test time, 8 mirrorings, min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['card']} | {r['patches_per_s']:.1f} | {r['case_s']:.2f} | {r['train_min']:.1f} "
            f"| {r['val_min']:.1f} | {r['epoch_min']:.1f} | {r['run_h']:.1f} | {r['test_min']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="epoch_time.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="the folder experiments/gpu_train_check.sh wrote")
    parser.add_argument("--train-cases", type=positive_int, default=1001)
    parser.add_argument("--val-cases", type=positive_int, default=250)
    parser.add_argument("--samples-per-volume", type=positive_int, default=4)
    parser.add_argument("--val-every", type=positive_int, default=5)
    parser.add_argument("--epochs", type=positive_int, default=300)
    args = parser.parse_args(argv)
    settings = (args.train_cases, args.val_cases, args.samples_per_volume, args.val_every, args.epochs)
    print(table(estimate(args.out, *settings), *settings), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time to Dice: a run's validation curve against the seconds of fitting, from its CSV log
(``time/elapsed_s``, which ``tumorseg.training.callbacks`` logs with every validation), and the
seconds until a Dice is first reached."""

from __future__ import annotations

import csv
from pathlib import Path

from tumorseg.labels import REGIONS


def read_curve(metrics_csv: str | Path) -> list[dict]:
    """Validation rows of a run's CSV log: epoch, seconds, Dice per region and mean."""
    rows = []
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if row.get("val/dice_mean") and row.get("time/elapsed_s"):
                entry = {"epoch": int(row["epoch"]), "seconds": float(row["time/elapsed_s"])}
                entry["mean"] = float(row["val/dice_mean"])
                entry.update({r: float(row[f"val/dice_{r}"]) for r in REGIONS})
                rows.append(entry)
    return rows


def first_reached(curve: list[dict], threshold: float) -> float | None:
    """Seconds at the first validation whose mean Dice is at least ``threshold`` (None: never)."""
    return next((p["seconds"] for p in curve if p["mean"] >= threshold), None)

"""What an evaluation reports: the summary over cases, the CSV and JSON files, the printed table."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tumorseg.evaluate.lesionwise import LESIONWISE_METRICS
from tumorseg.evaluate.metrics import METRICS
from tumorseg.io import atomic_write
from tumorseg.labels import REGIONS, label_set

COLUMNS = ("case_id", "region", *METRICS)
LESIONWISE_COLUMNS = ("case_id", "region", *LESIONWISE_METRICS)
MODES = {"volume": METRICS, "lesionwise": LESIONWISE_METRICS}
"""``--metrics`` of the evaluation -> the metrics of each row: whole-volume or BraTS 2023 lesion-wise."""
# lesion counts are summed over the cases, not averaged
_COUNTS = ("num_tp", "num_fp", "num_fn")


@dataclass
class EvaluationResult:
    """What ``evaluate_folder`` found.

    Attributes:
        rows: One dict per evaluated case and region with the keys of ``COLUMNS`` (of
            ``LESIONWISE_COLUMNS`` in the lesion-wise mode), sorted by case id then in the order of
            the label set's regions; NaN where a metric is undefined.
        summary: region -> metric -> ``{"mean", "median", "std"}`` over the cases, NaNs ignored
            (NaN when no case has a value); std is the population standard deviation. The lesion
            counts have ``{"total"}`` instead.
        missing: Case id -> why it has no counterpart (a prediction without reference or a
            reference without prediction).
        errors: Case id -> why the case could not be evaluated (unreadable file, shape mismatch,
            label values outside the convention...).
        labels: The label convention the prediction files were read with.
        labels_reason: How that convention was chosen, for the user.
        label_set: The label set of that convention (``tumorseg.labels``), whose regions are reported.
        csv_path: The CSV written, or None.
        json_path: The JSON written, or None.
        mode: The metrics, a key of ``MODES``.
        task: The BraTS task of the lesion-wise metrics (see ``tumorseg.evaluate.lesionwise.TASKS``), else "".
    """

    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, float]]]
    missing: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    labels: str = ""
    labels_reason: str = ""
    label_set: str = "brats2023"
    csv_path: Path | None = None
    json_path: Path | None = None
    mode: str = "volume"
    task: str = ""

    @property
    def ok(self) -> bool:
        """True when every case had a counterpart and was evaluated."""
        return not self.missing and not self.errors

    @property
    def case_ids(self) -> list[str]:
        """The evaluated cases, sorted."""
        return sorted({row["case_id"] for row in self.rows})


def summarise(
    rows: Iterable[dict[str, Any]], mode: str = "volume", regions: Sequence[str] = REGIONS
) -> dict[str, dict[str, dict[str, float]]]:
    """region -> metric -> ``{"mean", "median", "std"}`` over the rows, NaNs ignored (NaN when none
    is left); ``{"total"}`` for the lesion counts. ``mode`` is a key of ``MODES``; ``regions`` those
    of the label set (default: WT, TC, ET)."""
    rows = list(rows)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for region in regions:
        summary[region] = {}
        for metric in MODES[mode]:
            if metric in _COUNTS:
                summary[region][metric] = {"total": sum(int(row[metric]) for row in rows if row["region"] == region)}
                continue
            values = np.array([row[metric] for row in rows if row["region"] == region], dtype=np.float64)
            values = values[~np.isnan(values)]
            if values.size:
                stats = {"mean": np.mean(values), "median": np.median(values), "std": np.std(values)}
            else:
                stats = dict.fromkeys(("mean", "median", "std"), math.nan)
            summary[region][metric] = {name: float(value) for name, value in stats.items()}
    return summary


def write_csv(rows: Iterable[dict[str, Any]], path: str | os.PathLike, columns: tuple[str, ...] = COLUMNS) -> None:
    """One line per case and region with ``columns`` (``COLUMNS`` or ``LESIONWISE_COLUMNS``); NaN is written ``nan``."""
    with atomic_write(path) as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _json_safe(value: Any) -> Any:
    # JSON has no NaN: undefined metrics become null
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_json(result: EvaluationResult, path: str | os.PathLike) -> None:
    """``{"cases": {case: {region: {metric: value}}}, "summary", "missing", "errors", "labels", "metrics"}``
    (and ``"task"`` for the lesion-wise metrics); NaN is null."""
    cases: dict[str, dict[str, dict[str, float]]] = {}
    for row in result.rows:
        cases.setdefault(row["case_id"], {})[row["region"]] = {metric: row[metric] for metric in MODES[result.mode]}
    content = {
        "cases": cases,
        "summary": result.summary,
        "missing": result.missing,
        "errors": result.errors,
        "labels": result.labels,
        "metrics": result.mode,
    }
    if result.task:
        content["task"] = result.task
    content = _json_safe(content)
    with atomic_write(path) as file:
        json.dump(content, file, indent=2, allow_nan=False)


def _format(metric: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.4f}" if metric in ("dice", "lesion_dice", "sensitivity", "specificity") else f"{value:.2f}"


def _lesionwise_table(result: EvaluationResult) -> Table:
    table = Table(title=f"BraTS {result.task} lesion-wise metrics over {len(result.case_ids)} case(s)")
    names = ("region", "lesion Dice mean", "median", "lesion HD95 mean (mm)", "median", "TP", "FP", "FN")
    for name in names:
        table.add_column(name, justify="left" if name == "region" else "right")
    labels = label_set(result.label_set)
    for region in labels.regions:
        stats = result.summary[region]
        table.add_row(
            labels.region_names[region],
            *(
                _format(metric, stats[metric][name])
                for metric in ("lesion_dice", "lesion_hd95")
                for name in ("mean", "median")
            ),
            *(str(stats[count]["total"]) for count in _COUNTS),
        )
    return table


def print_result(result: EvaluationResult, console: Console) -> None:
    """The summary table, then the cases without counterpart and the failed cases."""
    if result.mode == "lesionwise":
        table = _lesionwise_table(result)
    else:
        table = Table(title=f"BraTS metrics over {len(result.case_ids)} case(s), NaNs ignored")
        for name in ("region", "metric", "mean", "median", "std"):
            table.add_column(name, justify="left" if name in ("region", "metric") else "right")
        labels = label_set(result.label_set)
        for region in labels.regions:
            for index, metric in enumerate(METRICS):
                stats = result.summary[region][metric]
                table.add_row(
                    labels.region_names[region] if index == 0 else "",
                    metric,
                    *(_format(metric, stats[name]) for name in ("mean", "median", "std")),
                    end_section=index == len(METRICS) - 1,
                )
    console.print(table)
    for title, entries in (("without counterpart", result.missing), ("not evaluated", result.errors)):
        if entries:
            console.print(f"[bold red]{len(entries)} case(s) {title}:[/bold red]")
            for case_id, message in entries.items():
                console.print(f"- {escape(case_id)}: {escape(message)}", highlight=False)


__all__ = ["COLUMNS", "LESIONWISE_COLUMNS", "MODES", "print_result", "summarise", "write_csv", "write_json"]

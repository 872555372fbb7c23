"""The per-epoch history of a run, read from Lightning's ``CSVLogger`` files (every config writes
the CSV log, with or without W&B beside it)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

History = dict[str, dict[int, float]]

# Columns of a CSVLogger file that index the metrics rather than being one.
_INDEX_COLUMNS = ("epoch", "step")


def epoch_history(csv_paths: Sequence[str | Path]) -> History:
    """Per-epoch values of every metric in Lightning ``CSVLogger`` files.

    Args:
        csv_paths: ``metrics.csv`` files, oldest first: a run resumed into a new log folder
            after a crash gives one file per attempt. A single path is accepted too.

    Returns:
        Metric name -> {epoch: value}, for every column but ``epoch`` and ``step``, in the order
        the columns first appear. Rows are sparse (a row holds only what was logged at its step),
        so empty cells are skipped. Within a file the last row of an epoch wins; across files a
        later file's value replaces an earlier one, as the resumed run redid that epoch.

    Raises:
        FileNotFoundError: none of the files exists. Missing ones are skipped otherwise, so the
            list may name attempts that crashed before logging anything.
    """
    if isinstance(csv_paths, str | Path):
        csv_paths = [csv_paths]  # a str is a Sequence too: without this it would be read letter by letter
    paths = [Path(p) for p in csv_paths]
    existing = [p for p in paths if p.is_file()]
    if not existing:
        raise FileNotFoundError(
            f"None of the metrics files exists: {', '.join(str(p) for p in paths) or '(none given)'}"
        )
    history: History = {}
    for path in existing:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            for column in reader.fieldnames or ():
                if column not in _INDEX_COLUMNS:
                    history.setdefault(column, {})
            for row in reader:
                epoch = _to_float(row.get("epoch"))
                if epoch is None:
                    continue  # a row outside any epoch cannot be placed on the plot
                for column, cell in row.items():
                    if column is None or column in _INDEX_COLUMNS:
                        continue  # None holds the surplus cells of a ragged row
                    value = _to_float(cell)
                    if value is not None:
                        history[column][int(epoch)] = value
    return history


def _to_float(cell: str | None) -> float | None:
    if cell is None or not cell.strip():
        return None
    try:
        return float(cell)
    except ValueError:
        return None

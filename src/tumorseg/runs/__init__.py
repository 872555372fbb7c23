"""Finished training runs, read back: their curves side by side (``curves``: the CSV logs of a run and
of the runs it resumed, tables, the paper's figures) and their scores on their own validation cases in
the source geometry, per fold, model and ensemble (``scoring``: cross-validation).

``experiments/plot_runs.py`` and ``experiments/evaluate_runs.py`` are their command lines.
"""

from tumorseg.runs.curves import PAPER_SCORES, Run, RunError, load_run, plot_runs, results_table, summarize
from tumorseg.runs.scoring import evaluate_runs

__all__ = ["PAPER_SCORES", "Run", "RunError", "evaluate_runs", "load_run", "plot_runs", "results_table", "summarize"]

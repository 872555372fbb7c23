"""Figures and a results table of finished training runs, side by side.

Usage::

    python experiments/plot_runs.py RUN_DIR [RUN_DIR ...] --out DIR [--reference paper] [--title T]

    python experiments/plot_runs.py outputs/brats_arunet3d/runs/* outputs/brats_linknet3d/runs/* \\
        outputs/brats_pspnet3d/runs/* --out figures --reference paper

A run directory is what ``train.py`` writes: ``config.yaml`` (the composed Hydra config),
``csv/metrics.csv`` (Lightning's ``CSVLogger``), ``run_info.json`` (``previous_metrics``: the
metrics files of the runs a resumed run continues). For each run the history is read from the CSV
log, which every logger config writes (W&B's too): the earlier runs' files of ``previous_metrics``
first (oldest first), so a resumed run shows all its epochs (a later file's value of an epoch wins).

Written to ``--out``:

* ``<task_name or run folder name>_loss_score.png`` per run: the paper's figure, Dice loss and Dice
  score per epoch, train and validation (``tumorseg.plots.plot_loss_score``). Runs that would share
  a name (the default ``task_name`` is ``train``) get ``<task_name>_<run folder name>``;
* ``comparison.png``: validation Dice loss and validation mean Dice per epoch, one line per run,
  labelled by network (``model.network.name``), or ``task_name`` without a config;
* ``results.md`` (also printed): one row per run with network, label scheme, epochs run, the final
  validation Dice of the regions WT, TC, ET and, where logged (``val/dice_ncr``, ``val/dice_ed``),
  of the classes NCR and ED (ET is both a region and a class), the mean, the best mean and its
  epoch; ``--reference paper`` adds the paper's own score at the last epoch, 1 - Dice loss on
  validation (``val/dice_loss``) and on the epoch's last training batch
  (``train/dice_loss_last_batch``), and the column "paper (reported)", the final validation scores
  the SNPD 2022 paper reports, with a note on how they compare;
* with ``--reference paper``, ``<name>_paper.png`` per run: the paper's figure (``paper_figure``),
  Dice loss and the paper's Dice score (1 - Dice loss) per epoch, training (the epoch's last batch,
  as the paper drew it, and the epoch mean) and validation, with the BraTS region Dice of the
  validation cases beside them;
* ``results.json``: the same numbers, unrounded (non-finite values as null).

``--title T`` titles the comparison figure and the table, and heads each run figure's title.

Every file is written atomically. A run directory without metrics, or whose metrics hold neither a
Dice loss nor a Dice score, is an error naming it: nothing is written and the exit status is 1.

``experiments/plot_runs.py`` runs ``main``; ``tumorseg.runs.scoring`` draws every scored run with ``plot_runs``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tumorseg.io import write_atomic
from tumorseg.labels import CLASS_NAMES, REGION_NAMES
from tumorseg.plots import History, epoch_history, plot_loss_score, save_figure

PAPER_TITLE = "Attention Mechanism, Linked Networks, and Pyramid Pooling Enabled 3D Biomedical Image Segmentation"
# The final validation Dice the paper reports per network.
PAPER_SCORES = {"arunet3d": 0.6488, "linknet3d": 0.6485, "pspnet3d": 0.6501}
PAPER_COLUMN = "paper (reported)"
PAPER_NOTE = (
    f'{PAPER_COLUMN}: the final validation score reported in the SNPD 2022 paper "{PAPER_TITLE}". It is the '
    "paper's Keras Dice coefficient (1 - its soft Dice loss over the 4 classes) on the paper's own validation split, "
    "so the numbers are comparable in kind to the 1 - Dice loss columns here, not identical in definition (other "
    "data, split and scale); the mean over WT, TC and ET is the stricter BraTS measure."
)
REFERENCES = {
    "paper": {
        "title": PAPER_TITLE,
        "venue": "SNPD 2022",
        "scores": PAPER_SCORES,
        "column": PAPER_COLUMN,
        "note": PAPER_NOTE,
    }
}
REGIONS = tuple(REGION_NAMES.items())
CLASSES = tuple((c, CLASS_NAMES[c]) for c in ("ncr", "ed"))  # the ET class is the ET region
LOSS_KEYS = ("train/dice_loss", "val/dice_loss", "train/dice_mean", "val/dice_mean")  # plot_loss_score's series
# the Dice loss of each epoch's last training batch (SegmentationModule): the paper's training curve is 1 minus it
LAST_BATCH_KEY = "train/dice_loss_last_batch"
PAPER_SCORE_COLUMNS = {
    "val_dice_score": "1 - Dice loss, val",
    "train_dice_score_last_batch": "1 - Dice loss, train last batch",
}


class RunError(Exception):
    """A run directory that cannot be read or drawn; the message names it."""


@dataclass
class Run:
    """One training run: where it is, what it trained and its per-epoch history."""

    path: Path
    task_name: str | None
    network: str | None
    labels: str | None
    max_epochs: int | None
    read: list[Path]  # the metrics files read, oldest first
    history: History
    name: str = ""  # figure file stem, unique among the runs
    label: str = ""  # legend label, unique among the runs
    warnings: list[str] = field(default_factory=list)

    def series(self, key: str) -> dict[int, float]:
        """{epoch: value} of a metric, under its name or Lightning's ``_epoch`` form; empty if not logged."""
        return dict(self.history.get(key) or self.history.get(f"{key}_epoch") or {})

    @property
    def epochs(self) -> list[int]:
        return sorted({epoch for values in self.history.values() for epoch in values})


# --------------------------------------------------------------------------------------------
# Reading a run directory


def load_run(run_dir: str | Path) -> Run:
    """Read the config and the history (the CSV logs) of one run directory.

    Raises:
        RunError: ``run_dir`` is not a folder, its config or ``run_info.json`` cannot be read, or it
            has no CSV log, or none of the Dice loss and Dice score series.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory.")
    config = _read_config(path)
    warnings: list[str] = []  # about the CSV logs
    csv_files = _csv_files(path, warnings)
    read = [p for p in csv_files if p.is_file()]
    if not read:
        raise RunError(
            f"{path}: no metrics: no CSV log (csv/metrics.csv, or an earlier run's listed in run_info.json)."
        )
    history = {key: values for key, values in epoch_history(read).items() if values}
    where = ", ".join(str(p) for p in read)
    if not history:
        raise RunError(f"{path}: no metrics: nothing logged in {where}.")
    if not any(history.get(key) or history.get(f"{key}_epoch") for key in (*LOSS_KEYS, LAST_BATCH_KEY)):
        raise RunError(
            f"{path}: no Dice loss or Dice score ({', '.join((*LOSS_KEYS, LAST_BATCH_KEY))}) in {where}; "
            f"metrics found: {', '.join(sorted(history))}."
        )
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    network = model.get("network") if isinstance(model.get("network"), dict) else {}
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    max_epochs = trainer.get("max_epochs")
    return Run(
        path=path,
        task_name=_text(config.get("task_name")),
        network=_text(network.get("name")),
        labels=_text(model.get("labels")),
        max_epochs=max_epochs if isinstance(max_epochs, int) and not isinstance(max_epochs, bool) else None,
        read=read,
        history=history,
        warnings=warnings,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _read_config(run_dir: Path) -> dict:
    for candidate in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if candidate.is_file():
            try:
                config = yaml.safe_load(candidate.read_text(encoding="utf-8"))
            except yaml.YAMLError as err:
                raise RunError(f"{run_dir}: cannot read {candidate.name}: {err}") from err
            return config if isinstance(config, dict) else {}
    return {}  # no config: the run is named after its folder


def _csv_files(run_dir: Path, warnings: list[str]) -> list[Path]:
    """The CSV logs of a run, oldest first: the earlier runs' (run_info.json) then its own."""
    files = [*_previous_metrics(run_dir, warnings)]
    own = run_dir / "csv" / "metrics.csv"
    if not own.is_file():  # a CSVLogger with versioned folders
        versions = [p for p in (run_dir / "csv").glob("version_*/metrics.csv") if p.parent.name[8:].isdigit()]
        own_files = sorted(versions, key=lambda p: int(p.parent.name[8:])) or [own]
    else:
        own_files = [own]
    seen = {_same(p) for p in files}
    files += [p for p in own_files if _same(p) not in seen]
    return files


def _same(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _previous_metrics(run_dir: Path, warnings: list[str]) -> list[Path]:
    info_path = run_dir / "run_info.json"
    if not info_path.is_file():
        return []
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunError(f"{run_dir}: cannot read run_info.json: {err}") from err
    listed = info.get("previous_metrics") if isinstance(info, dict) else None
    files = []
    for entry in listed or []:
        path = Path(entry)
        if not path.is_absolute() and (run_dir / path).is_file():
            path = run_dir / path
        if not path.is_file():
            warnings.append(
                f"{run_dir}: the earlier run's metrics file {entry} (run_info.json) is missing; its epochs are left out."
            )
        files.append(path)
    return files


# --------------------------------------------------------------------------------------------
# Numbers


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _last(values: dict[int, float]) -> float | None:
    return values[max(values)] if values else None


def _one_minus(value: float | None) -> float | None:
    return None if value is None else 1.0 - value


def summarize(run: Run, reference: str | None = None) -> dict[str, Any]:
    """The numbers of a run's row: final validation Dice, best mean and its epoch, epochs run."""
    mean = run.series("val/dice_mean")
    finite_means = {epoch: value for epoch, value in mean.items() if math.isfinite(value)}
    best_epoch = max(finite_means, key=lambda e: (finite_means[e], -e)) if finite_means else None  # first of ties
    epochs = run.epochs
    final = {key: _finite(_last(run.series(f"val/dice_{key}"))) for key, _ in (*REGIONS, *CLASSES)}
    final["mean"] = _finite(_last(mean))
    summary: dict[str, Any] = {
        "run_dir": str(run.path),
        "name": run.name,
        "label": run.label,
        "task_name": run.task_name,
        "network": run.network,
        "labels": run.labels,
        "read": [str(p) for p in run.read],
        "epochs": len(epochs),
        "first_epoch": epochs[0] if epochs else None,
        "last_epoch": epochs[-1] if epochs else None,
        "max_epochs": run.max_epochs,
        "final_epoch": max(mean) if mean else None,
        "final": final,
        "final_val_dice_loss": _finite(_last(run.series("val/dice_loss"))),
        "final_train_dice_loss_last_batch": _finite(_last(run.series(LAST_BATCH_KEY))),
        "best_mean": finite_means[best_epoch] if best_epoch is not None else None,
        "best_epoch": best_epoch,
    }
    # the paper's score: the soft Dice over the classes (softmax4: with the background), 1 - Dice loss
    summary["final_val_dice_score"] = _one_minus(summary["final_val_dice_loss"])
    summary["final_train_dice_score_last_batch"] = _one_minus(summary["final_train_dice_loss_last_batch"])
    if reference is not None:
        summary["paper_reported"] = REFERENCES[reference]["scores"].get((run.network or "").lower())
    return summary


def results_table(summaries: Sequence[dict[str, Any]], reference: str | None = None, title: str | None = None) -> str:
    """The markdown table of the runs (with its notes)."""
    classes = [(key, name) for key, name in CLASSES if any(s["final"].get(key) is not None for s in summaries)]
    header = ["run", "network", "labels", "epochs", *(name for _, name in REGIONS), *(name for _, name in classes)]
    header += ["mean", "best mean", "best epoch"]
    if reference is not None:
        header += [*PAPER_SCORE_COLUMNS.values(), REFERENCES[reference]["column"]]
    lines = [f"# {title}", ""] if title else []
    lines += [markdown_row(header), markdown_row(["---"] * 3 + ["---:"] * (len(header) - 3))]
    for s in summaries:
        epochs = f"{s['epochs']}/{s['max_epochs']}" if s["max_epochs"] is not None else str(s["epochs"])
        cells = [s["name"], s["network"] or "-", s["labels"] or "-", epochs]
        cells += [_number(s["final"][key]) for key, _ in (*REGIONS, *classes)]
        cells += [_number(s["final"]["mean"]), _number(s["best_mean"]), _number(s["best_epoch"])]
        if reference is not None:
            cells += [_number(s[f"final_{key}"]) for key in PAPER_SCORE_COLUMNS]
            cells.append(_number(s["paper_reported"]))
        lines.append(markdown_row(cells))
    named_classes = " and ".join(name for _, name in classes)
    what = f", {named_classes}: the classes (ET is both a region and a class)" if classes else ""
    lines += [
        "",
        f"Validation Dice at the last epoch it was logged; WT, TC, ET: the evaluation regions{what}; mean: the mean "
        "over WT, TC and ET; best mean: the highest mean of any epoch (epochs count from 0); epochs: epochs logged "
        "(of trainer.max_epochs); -: not logged.",
    ]
    if reference is not None:
        lines += [
            "",
            f"{' and '.join(PAPER_SCORE_COLUMNS.values())}: the paper's score at the last epoch, the soft Dice "
            "averaged over the classes (softmax4: background, NCR, ED, ET), on the validation cases and on the "
            "epoch's last training batch (the training curve the paper drew).",
            "",
            REFERENCES[reference]["note"],
        ]
    return "\n".join(lines) + "\n"


def _number(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}"


def markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


# --------------------------------------------------------------------------------------------
# Figures


def _finish_panel(ax, title: str, ylabel: str) -> None:
    """Title, axes and legend of one panel of per-epoch curves; "not logged" where it has none."""
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(True, alpha=0.3)
    if ax.has_data():
        ax.legend()
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.5")


def comparison_figure(runs: Sequence[Run], out_path: str | Path, *, title: str | None = None) -> Path:
    """Validation Dice loss and validation mean Dice per epoch, one line per run."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels = (("val/dice_loss", "Validation Dice loss"), ("val/dice_mean", "Validation mean Dice"))
    for ax, (key, name) in zip(axes, panels):
        for index, run in enumerate(runs):
            values = run.series(key)
            if values:
                epochs = sorted(values)
                ax.plot(
                    epochs,
                    [values[e] for e in epochs],
                    marker="o",
                    markersize=3,
                    linewidth=1.6,
                    color=f"C{index % 10}",
                    label=run.label,
                )
        _finish_panel(ax, name, name)
    fig.suptitle(title or "Validation Dice loss and mean Dice per epoch")
    return save_figure(fig, out_path)


def paper_curves(run: Run) -> dict[str, dict[str, tuple[dict[int, float], str]]]:
    """What ``paper_figure`` draws: panel title -> legend -> ({epoch: value}, style).

    Training as the paper drew it, the Dice loss of the epoch's last batch
    (``train/dice_loss_last_batch``), with the epoch's mean (``train/dice_loss``) beside it;
    validation, the mean over the validation cases (``val/dice_loss``); the Dice score is 1 minus
    each. The third panel holds the validation Dice of the regions WT, TC, ET and their mean.
    Series a run did not log are left out (runs from before ``train/dice_loss_last_batch`` existed
    have the epoch mean only).
    """
    losses = {
        "train (last batch)": (run.series(LAST_BATCH_KEY), "main"),
        "train (epoch mean)": (run.series("train/dice_loss"), "thin"),
        "val": (run.series("val/dice_loss"), "main"),
    }
    scores = {label: ({e: 1.0 - v for e, v in values.items()}, style) for label, (values, style) in losses.items()}
    regions = {f"val {name}": (run.series(f"val/dice_{key}"), "thin") for key, name in REGIONS}
    regions["val mean (WT, TC, ET)"] = (run.series("val/dice_mean"), "main")
    panels = {"Dice loss": losses, "Dice score (1 - Dice loss)": scores, "BraTS region Dice (validation)": regions}
    return {panel: {label: line for label, line in lines.items() if line[0]} for panel, lines in panels.items()}


def paper_figure(run: Run, out_path: str | Path, *, title: str | None = None) -> Path:
    """The paper's figure of one run (``paper_curves``): Dice loss, the paper's Dice score
    (1 - Dice loss) and the BraTS region Dice per epoch, side by side."""
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    colours = {"train": "C0", "val": "C1", "val WT": "C2", "val TC": "C3", "val ET": "C4"}
    for ax, (panel, lines) in zip(fig.subplots(1, 3), paper_curves(run).items()):
        for label, (values, style) in lines.items():
            epochs = sorted(values)
            thin = style == "thin"
            ax.plot(
                epochs,
                [values[e] for e in epochs],
                "--" if thin else "-",
                marker="." if thin else "o",
                markersize=3 if thin else 4,
                linewidth=0.9 if thin else 1.8,
                color=colours.get(label.split(" (")[0], "C1"),
                label=label,
            )
        _finish_panel(ax, panel, panel.split(" (")[0])
    fig.suptitle(title or run.label)
    return save_figure(fig, out_path)


def _name_runs(runs: Sequence[Run]) -> None:
    """Unique figure names (task_name, else folder) and legend labels (network, else task_name or folder)."""
    folders = [_filename(run.path.resolve().name) for run in runs]
    stems = [_filename(run.task_name) if run.task_name else folder for run, folder in zip(runs, folders)]
    # names that collide (several runs of one task_name) get the run folder's name too, then a counter
    names = [f"{s}_{f}" if stems.count(s) > 1 and s != f else s for s, f in zip(stems, folders)]
    seen: dict[str, int] = {}
    for run, name in zip(runs, names):
        seen[name] = seen.get(name, 0) + 1
        run.name = name if names.count(name) == 1 else f"{name}_{seen[name]}"
    labels = [run.network or run.task_name or folder for run, folder in zip(runs, folders)]
    for run, label in zip(runs, labels):
        run.label = label if labels.count(label) == 1 else f"{label} ({run.name})"


def _filename(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("._") or "run"


# --------------------------------------------------------------------------------------------
# Writing


def plot_runs(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    reference: str | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Read every run, then write the figures, ``results.json`` and ``results.md`` into ``out``.

    Returns:
        The content of ``results.json``, with ``"markdown"`` (the table) added.

    Raises:
        RunError: a run cannot be read; the message lists every such run. Nothing is written then.
    """
    if reference is not None and reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}.")
    runs, errors = [], []
    for run_dir in run_dirs:
        try:
            runs.append(load_run(run_dir))
        except RunError as err:
            errors.append(str(err))
    if errors:
        raise RunError("\n".join(errors))
    if not runs:
        raise RunError("No run directories given.")
    for run in runs:
        for warning in run.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    _name_runs(runs)

    out = Path(out)
    figures = []
    for run in runs:
        run_title = f"{title}: {run.label}" if title else run.label
        figures.append(plot_loss_score(run.history, out / f"{run.name}_loss_score.png", title=run_title))
    comparison = comparison_figure(runs, out / "comparison.png", title=title)
    summaries = [summarize(run, reference) for run in runs]
    for summary, figure in zip(summaries, figures):
        summary["figure"] = str(figure)
    if reference == "paper":
        for run, summary in zip(runs, summaries):
            run_title = f"{title}: {run.label}" if title else run.label
            summary["paper_figure"] = str(paper_figure(run, out / f"{run.name}_paper.png", title=run_title))
    markdown = results_table(summaries, reference, title)
    results: dict[str, Any] = {
        "title": title,
        "comparison": str(comparison),
        "table": str(out / "results.md"),
        "runs": summaries,
    }
    if reference is not None:
        results["reference"] = {"name": reference, **REFERENCES[reference]}
    write_atomic(out / "results.json", json.dumps(results, indent=1, allow_nan=False) + "\n")
    write_atomic(out / "results.md", markdown)
    return {**results, "markdown": markdown}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python experiments/plot_runs.py",
        description="Per-run loss/score figures, a comparison figure and a results table of training runs.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training run directories (train.py's output)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the figures and the tables")
    parser.add_argument(
        "--reference",
        choices=sorted(REFERENCES),
        default=None,
        help="add the scores the SNPD 2022 paper reports as a column",
    )
    parser.add_argument(
        "--title", default=None, help="title of the comparison figure and the table, prefix of the run figures' titles"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = plot_runs(args.run_dirs, args.out, reference=args.reference, title=args.title)
    except RunError as err:
        for line in str(err).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 1
    print(results["markdown"], end="")
    figures = [path for run in results["runs"] for path in (run["figure"], run.get("paper_figure")) if path]
    print(f"\nFigures: {', '.join(figures)}, {results['comparison']}")
    print(f"Tables: {results['table']}, {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

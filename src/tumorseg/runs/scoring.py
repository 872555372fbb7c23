"""Score finished training runs the same way: each run's validation cases segmented in the source
geometry with ``predict`` and evaluated with the BraTS metrics, per fold, per model and per
ensemble, next to the training curves.

Usage::

    python experiments/evaluate_runs.py RUN [RUN ...] --out DIR [--ensemble "NAME=PATTERN"]...
        [--checkpoint last|best] [--mirror on|off] [--et-min-voxels N] [--title T]

    # 5-fold cross-validation of the three modern recipes and their ensemble
    python experiments/evaluate_runs.py outputs/brats_cv --ensemble "ensemble=brats_*" --out outputs/brats_cv/results

RUN is a training run directory (``config.yaml``, ``split.json``, ``run_info.json``,
``checkpoints/``) or a multirun directory holding such runs (``hydra.sweep.dir``). Every run is
scored on the validation cases of its own ``split.json``, read from the dataset of its
``run_info.json``, with the checkpoint ``--checkpoint`` (default ``last``: every run after the
same number of epochs) and the test-time settings recorded in it (``inference``: window,
overlap, ``mirror``, ``et_min_voxels``; ``--mirror`` and ``--et-min-voxels`` override them for all
runs; runs trained before checkpoints recorded them use the ``test`` block of their config).
Recipes that validate on resized or cropped volumes (the paper's) are thus compared on the
original grid like every other.

Several runs of one task_name on one fold (a killed cross-validation and the runs that resumed it
with ``resume=DIR``): the run with the newest checkpoint counts, the others are listed as left out.

``--ensemble "NAME=PATTERN"`` averages, per fold, the probabilities of the runs whose
``task_name`` matches the glob PATTERN and which share that fold's validation cases (the
three-network ensemble of a cross-validation: one ensemble per fold).

Written to ``--out``:

* ``predictions/<model>/<fold>/``: the label maps, ``metrics.csv`` / ``metrics.json`` (per case and
  region) and ``source.json`` (checkpoints and settings). A killed job resumes: finished cases are
  kept, unless the checkpoints or settings changed, which redoes the fold;
* ``results.md`` (also printed) and ``results.json``: per model, Dice of WT, TC, ET and their mean,
  HD95, over the folds (mean and standard deviation of the fold means when there are several
  folds), the validation Dice the run logged during training, and, when two recipes trained the
  same network, a table of the networks side by side;
* ``test_dice.png``: per-case Dice per model and region; ``curves/``: the training curves of every
  run (``tumorseg.runs.curves``'s figures and table).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from tumorseg.cli import non_negative_int, on_off
from tumorseg.io import write_atomic
from tumorseg.labels import REGIONS
from tumorseg.plots import save_figure
from tumorseg.runs.curves import RunError, markdown_row, plot_runs

CHECKPOINTS = ("last", "best")


class EvaluationSetupError(Exception):
    """Runs that cannot be scored; the message names each and what to do."""


@dataclass
class RunSpec:
    """A training run to score: its checkpoint, data, validation cases and test-time settings."""

    path: Path
    name: str  # task_name
    network: str
    checkpoint: Path
    data_root: Path
    fold: str
    val_cases: list[str]
    mirror: bool | None  # None until read from the checkpoint (see test_settings)
    et_min_voxels: int | None
    val_dice: float | None = None  # last val/dice_mean logged during training


@dataclass
class Model:
    """A model scored per fold: one run per fold, or an ensemble of runs per fold."""

    name: str
    network: str
    folds: dict[str, list[RunSpec]] = field(default_factory=dict)

    @property
    def ensemble(self) -> bool:
        return any(len(runs) > 1 for runs in self.folds.values())


# --------------------------------------------------------------------------------------------- reading


def run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """The run directories of ``paths``: each one itself, or the runs of a multirun folder."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "config.yaml").is_file():
            found.append(path)
            continue
        if not path.is_dir():
            raise EvaluationSetupError(f"{path}: no such folder.")
        children = [c for c in path.iterdir() if c.is_dir() and (c / "config.yaml").is_file()]
        if not children:
            raise EvaluationSetupError(
                f"{path}: neither a run directory (config.yaml) nor a multirun folder holding run directories."
            )
        found += sorted(children, key=lambda c: (not c.name.isdigit(), int(c.name) if c.name.isdigit() else 0, c.name))
    return found


def _json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise EvaluationSetupError(f"{path}: cannot read the {what}: {err}") from err


def read_run(path: Path, checkpoint: str, mirror: bool | None, et_min_voxels: int | None) -> RunSpec:
    """The run in ``path``; ``mirror`` and ``et_min_voxels`` override its checkpoint's settings
    (None: ``test_settings`` reads them once the checkpoint is chosen)."""
    cfg = OmegaConf.load(path / "config.yaml")
    split = _json(path / "split.json", "split (written when training starts)")
    info = _json(path / "run_info.json", "run information")
    ckpt = path / "checkpoints" / f"{checkpoint}.ckpt"  # may be missing: see latest_runs
    root = Path(str((info.get("data") or {}).get("root", "")))
    if not root.is_dir():
        raise EvaluationSetupError(f"{path}: its dataset {root} is not there any more; restore it to score the run.")
    if not split.get("val"):
        raise EvaluationSetupError(f"{path}: split.json has no validation cases.")
    fold = f"fold {split['fold']}" if split.get("split") == "kfold" else str(split.get("split", "split"))
    return RunSpec(
        path=path,
        name=str(cfg.get("task_name") or path.name),
        network=str(cfg.model.network.name),
        checkpoint=ckpt,
        data_root=root,
        fold=fold,
        val_cases=[str(c) for c in split["val"]],
        mirror=mirror,
        et_min_voxels=et_min_voxels,
    )


def test_settings(run: RunSpec) -> None:
    """Fill the run's ``mirror`` and ``et_min_voxels`` not given on the command line: from its
    checkpoint (``inference``), or, for a checkpoint written before it recorded them, from the
    ``test`` block of the run's config, where they were kept then."""
    from tumorseg.checkpoints import load_checkpoint

    recorded = load_checkpoint(run.checkpoint)["hyper_parameters"].get("inference") or {}
    if "et_min_voxels" not in recorded:
        recorded = OmegaConf.to_container(OmegaConf.load(run.path / "config.yaml")).get("test") or {}
    if run.mirror is None:
        run.mirror = bool(recorded.get("mirror", False))
    if run.et_min_voxels is None:
        run.et_min_voxels = int(recorded.get("et_min_voxels", 0))


def latest_runs(runs: Sequence[RunSpec]) -> tuple[list[RunSpec], list[str]]:
    """One run per task_name and fold: the one with the newest checkpoint, so a killed
    cross-validation and its resumed runs (``resume=DIR``) can be given together. Returns the runs
    kept and notes on those left out; a task and fold without any checkpoint is an error."""
    groups: dict[tuple[str, str], list[RunSpec]] = {}
    for run in runs:
        groups.setdefault((run.name, run.fold), []).append(run)
    kept, notes, errors = [], [], []
    for (name, fold), group in groups.items():
        ready = [r for r in group if r.checkpoint.is_file()]
        if not ready:
            errors += [f"{r.path}: no checkpoints/{r.checkpoint.name} (has the run trained an epoch?)." for r in group]
            continue
        best = max(ready, key=lambda r: r.checkpoint.stat().st_mtime_ns)
        kept.append(best)
        notes += [
            f"{r.path} ({name}, {fold}) left out: {best.path} has a newer checkpoint." for r in group if r is not best
        ]
    if errors:
        raise EvaluationSetupError("\n".join(errors))
    return sorted(kept, key=lambda r: runs.index(r)), notes


def parse_ensemble(text: str) -> tuple[str, str]:
    name, sep, pattern = text.partition("=")
    if not sep or not name.strip() or not pattern.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATTERN (e.g. 'ensemble=brats_*'), got {text!r}")
    return name.strip(), pattern.strip()


def build_models(runs: Sequence[RunSpec], ensembles: Sequence[tuple[str, str]]) -> list[Model]:
    """One model per task_name (a run per fold), then one per ensemble (its runs per fold)."""
    models: dict[str, Model] = {}
    for run in runs:
        model = models.setdefault(run.name, Model(run.name, run.network))
        model.folds[run.fold] = [run]  # one per fold: latest_runs
    for name, pattern in ensembles:
        if name in models:
            raise EvaluationSetupError(f"ensemble name {name!r} is also a run's task_name; choose another.")
        members = [run for run in runs if fnmatch.fnmatchcase(run.name, pattern)]
        if len({run.name for run in members}) < 2:
            raise EvaluationSetupError(
                f"ensemble {name}={pattern} matches {len({r.name for r in members})} model(s); it needs two or more."
            )
        ensemble = Model(name, "+".join(sorted({run.network for run in members})))
        for fold in sorted({run.fold for run in members}):
            group = [run for run in members if run.fold == fold]
            if len({tuple(sorted(r.val_cases)) for r in group}) > 1 or len({r.data_root for r in group}) > 1:
                raise EvaluationSetupError(
                    f"ensemble {name}: the runs of {fold} ({', '.join(str(r.path) for r in group)}) do not share "
                    "their dataset and validation cases."
                )
            for setting in ("mirror", "et_min_voxels"):
                if len({getattr(r, setting) for r in group}) > 1:
                    raise EvaluationSetupError(
                        f"ensemble {name}: its runs of {fold} differ in inference.{setting}; set it for all with "
                        f"--{setting.replace('_', '-')}."
                    )
            if len(group) > 1:
                ensemble.folds[fold] = group
        if not ensemble.folds:
            raise EvaluationSetupError(f"ensemble {name}={pattern}: no fold has two or more of its runs.")
        models[name] = ensemble
    return list(models.values())


# ---------------------------------------------------------------------------------------------- scoring


def _fold_dir(fold: str) -> str:
    return fold.replace(" ", "")


def _stamp(runs: Sequence[RunSpec]) -> dict[str, Any]:
    return {
        "checkpoints": [
            {
                "path": str(r.checkpoint.resolve()),
                "bytes": r.checkpoint.stat().st_size,
                "mtime_ns": r.checkpoint.stat().st_mtime_ns,
            }
            for r in runs
        ],
        "mirror": runs[0].mirror,
        "et_min_voxels": runs[0].et_min_voxels,
        "cases": runs[0].val_cases,
    }


def score_fold(runs: Sequence[RunSpec], out_dir: Path, *, device: str, workers: int, progress: bool):
    """Segment the fold's validation cases with the runs (averaged) and evaluate them."""
    from tumorseg.evaluate import evaluate_folder
    from tumorseg.predict import Predictor, PredictSettings, dataset_cases, predict
    from tumorseg.training.module import load_model

    first = runs[0]
    stamp = _stamp(runs)
    stamp_path = out_dir / "source.json"
    previous = json.loads(stamp_path.read_text()) if stamp_path.is_file() else None
    items = {item.case_id: item for item in dataset_cases(first.data_root)}
    missing = [c for c in first.val_cases if c not in items]
    if missing:
        raise EvaluationSetupError(f"{first.path}: validation cases {missing[:5]} are not in {first.data_root}.")
    settings = PredictSettings(
        output_dir=out_dir, png=False, overwrite=previous != stamp, workers=workers, progress=progress
    )
    # the settings of test_settings: the checkpoints' own, unless overridden (or kept in a legacy config)
    predictor = Predictor(
        [load_model(run.checkpoint) for run in runs], mirror=first.mirror, et_min_voxels=first.et_min_voxels,
        device=device, names=[str(run.checkpoint) for run in runs],
    )  # fmt: skip
    report = predict([items[c] for c in first.val_cases], predictor, settings)
    if report.failed:
        raise EvaluationSetupError(f"{out_dir}: cases failed: {report.failed}")
    write_atomic(stamp_path, json.dumps(stamp, indent=1) + "\n")
    result = evaluate_folder(
        out_dir, first.data_root, cases=first.val_cases, out=out_dir / "metrics.csv", progress=progress
    )
    if not result.ok:
        raise EvaluationSetupError(f"{out_dir}: evaluation incomplete: {result.missing or result.errors}")
    return result.rows


def per_case(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """case -> region (wt, tc, et) -> {dice, hd95}."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        table.setdefault(row["case_id"], {})[row["region"]] = {"dice": row["dice"], "hd95": row["hd95"]}
    return table


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise_model(cases_by_fold: dict[str, dict[str, dict[str, dict[str, float]]]]) -> dict[str, Any]:
    """Fold means of each region's Dice and HD95 and of the mean Dice; over folds: mean and std."""
    folds: dict[str, dict[str, float]] = {}
    for fold, cases in cases_by_fold.items():
        entry = {}
        for region in REGIONS:
            entry[f"dice_{region.lower()}"] = _mean([c[region]["dice"] for c in cases.values()])
            entry[f"hd95_{region.lower()}"] = _mean([c[region]["hd95"] for c in cases.values()])
        entry["dice_mean"] = _mean([_mean([c[r]["dice"] for r in REGIONS]) for c in cases.values()])
        entry["cases"] = len(cases)
        folds[fold] = entry
    keys = [k for k in next(iter(folds.values())) if k != "cases"]
    overall = {k: _mean([f[k] for f in folds.values()]) for k in keys}
    spread = {k: float(np.std([f[k] for f in folds.values()])) if len(folds) > 1 else None for k in keys}
    return {"folds": folds, "mean": overall, "std": spread, "cases": sum(f["cases"] for f in folds.values())}


# ---------------------------------------------------------------------------------------------- writing


def _number(value: float | None, std: float | None = None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3f} ± {std:.3f}" if std is not None else f"{value:.3f}"


def recipe_name(task_name: str, network: str) -> str:
    """The recipe a task trains: its name without the network's (``paper_arunet3d`` -> ``paper``)."""
    return task_name.replace(network, "").strip("_-") or task_name


def results_markdown(results: dict[str, Any], title: str | None) -> str:
    models = results["models"]
    several = any(len(m["summary"]["folds"]) > 1 for m in models)
    lines = [f"# {title}", ""] if title else []
    header = ["model", "network", "folds", "cases", "mirror", "ET→NCR under", "Dice WT", "Dice TC", "Dice ET",
              "Dice mean", "HD95 WT", "HD95 TC", "HD95 ET", "val Dice in training"]  # fmt: skip
    lines += [markdown_row(header), markdown_row(["---"] * 3 + ["---:"] * (len(header) - 3))]
    for m in models:
        s = m["summary"]
        mean, std = s["mean"], s["std"]
        cells = [m["name"], m["network"], str(len(s["folds"])), str(s["cases"]), "yes" if m["mirror"] else "no",
                 str(m["et_min_voxels"]) if m["et_min_voxels"] else "-"]  # fmt: skip
        cells += [_number(mean[f"dice_{r.lower()}"], std[f"dice_{r.lower()}"]) for r in REGIONS]
        cells.append(_number(mean["dice_mean"], std["dice_mean"]))
        cells += [_number(mean[f"hd95_{r.lower()}"]) for r in REGIONS]
        cells.append(_number(m.get("val_dice_training")))
        lines.append(markdown_row(cells))
    lines += [
        "",
        "Dice and HD95 (mm) of each run's validation cases, segmented in the source geometry and evaluated with the "
        "BraTS rules (an empty prediction of an empty region scores Dice 1); Dice mean: the mean over WT, TC and ET "
        "per case, averaged over the cases"
        + ("; with several folds, the mean ± standard deviation of the fold means." if several else ".")
        + " val Dice in training: the last val/dice_mean the run logged, on its own (possibly resized or cropped) "
        "grid, averaged over its folds.",
    ]
    if several:
        lines += ["", "## Mean Dice per fold", ""]
        folds = sorted({f for m in models for f in m["summary"]["folds"]})
        lines += [markdown_row(["model", *folds]), markdown_row(["---"] + ["---:"] * len(folds))]
        for m in models:
            per = m["summary"]["folds"]
            lines.append(markdown_row([m["name"], *(_number(per[f]["dice_mean"]) if f in per else "-" for f in folds)]))
    networks = results.get("by_network") or {}
    if networks:
        names = sorted({name for row in networks.values() for name in row})
        lines += ["", "## Mean Dice per network and recipe (task_name without the network's name)", ""]
        lines += [markdown_row(["network", *names, "best"]), markdown_row(["---"] + ["---:"] * (len(names) + 1))]
        for network, row in networks.items():
            best = max(row, key=lambda n: row[n])
            lines.append(markdown_row([network, *(_number(row.get(n)) for n in names), best]))
    return "\n".join(lines) + "\n"


def dice_figure(models: Sequence[dict[str, Any]], path: Path, title: str | None) -> Path:
    """Per-case Dice of WT, TC and ET per model: boxes with the cases as dots."""
    fig = Figure(figsize=(max(6.0, 1.6 * len(models) + 2), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.25
    rng = np.random.default_rng(0)
    for r, region in enumerate(REGIONS):
        positions, data = [], []
        for i, m in enumerate(models):
            values = [c[region]["dice"] for cases in m["cases"].values() for c in cases.values()]
            positions.append(i + (r - 1) * width)
            data.append([v for v in values if math.isfinite(v)])
        boxes = ax.boxplot(
            data,
            positions=positions,
            widths=width * 0.85,
            patch_artist=True,
            showfliers=False,
            medianprops={"color": "black"},
        )
        for box in boxes["boxes"]:
            box.set(facecolor=f"C{r}", alpha=0.35)
        for x, values in zip(positions, data):
            ax.scatter(x + rng.uniform(-0.06, 0.06, len(values)), values, s=10, color=f"C{r}", zorder=3,
                       label=region.upper() if x == positions[0] else None)  # fmt: skip
    ax.set_xticks(range(len(models)), [m["name"] for m in models], rotation=20, ha="right")
    ax.set_ylabel("Dice per case")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(title="region", loc="lower right")
    ax.set_title(title or "Validation cases in the source geometry")
    return save_figure(fig, path)


def evaluate_runs(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    ensembles: Sequence[tuple[str, str]] = (),
    checkpoint: str = "last",
    mirror: bool | None = None,
    et_min_voxels: int | None = None,
    device: str = "auto",
    workers: int = 1,
    title: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the runs and ensembles; see the module docstring. Returns the content of results.json."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}.")
    dirs = run_dirs(paths)
    runs, errors = [], []
    for path in dirs:
        try:
            runs.append(read_run(path, checkpoint, mirror, et_min_voxels))
        except EvaluationSetupError as err:
            errors.append(str(err))
    if errors:
        raise EvaluationSetupError("\n".join(errors))
    runs, notes = latest_runs(runs)
    for run in runs:
        test_settings(run)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    models = build_models(runs, ensembles)
    out = Path(out)
    curves = plot_runs([r.path for r in runs], out / "curves", title=title)
    logged = {Path(s["run_dir"]): s["final"]["mean"] for s in curves["runs"]}
    for run in runs:
        run.val_dice = logged.get(run.path)

    results: dict[str, Any] = {"title": title, "checkpoint": checkpoint, "left_out": notes, "models": []}
    for model in models:
        cases: dict[str, dict] = {}
        for fold, members in sorted(model.folds.items()):
            print(
                f"{model.name}, {fold}: {len(members[0].val_cases)} case(s), {len(members)} checkpoint(s)", flush=True
            )
            rows = score_fold(
                members, out / "predictions" / model.name / _fold_dir(fold), device=device, workers=workers,
                progress=progress,
            )  # fmt: skip
            cases[fold] = per_case(rows)
        first = next(iter(model.folds.values()))[0]
        own = [r.val_dice for rs in model.folds.values() for r in rs if not model.ensemble and r.val_dice is not None]
        results["models"].append({
            "name": model.name,
            "network": model.network,
            "ensemble": model.ensemble,
            "runs": {fold: [str(r.path) for r in rs] for fold, rs in model.folds.items()},
            "mirror": first.mirror,
            "et_min_voxels": first.et_min_voxels,
            "val_dice_training": _mean(own) if own else None,
            "summary": summarise_model(cases),
            "cases": cases,
        })  # fmt: skip
    by_network: dict[str, dict[str, float]] = {}
    for m in results["models"]:
        if not m["ensemble"]:
            by_network.setdefault(m["network"], {})[recipe_name(m["name"], m["network"])] = m["summary"]["mean"][
                "dice_mean"
            ]
    results["by_network"] = {n: row for n, row in by_network.items() if len(row) > 1}
    results["figure"] = str(dice_figure(results["models"], out / "test_dice.png", title))
    results["curves"] = str(out / "curves")
    markdown = results_markdown(results, title)
    write_atomic(out / "results.json", json.dumps(_finite(results), indent=1, allow_nan=False) + "\n")
    write_atomic(out / "results.md", markdown)
    return {**results, "markdown": markdown}


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python experiments/evaluate_runs.py",
        description="Segment each run's validation cases in the source geometry, evaluate them with the BraTS "
        "metrics, and tabulate per model, fold and ensemble.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories or multirun folders")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for predictions, tables and figures")
    parser.add_argument(
        "--ensemble", action="append", default=[], type=parse_ensemble, metavar="NAME=PATTERN",
        help="per fold, average the runs whose task_name matches PATTERN (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoint", choices=CHECKPOINTS, default="last", help="checkpoint of each run (default: last)"
    )
    parser.add_argument(
        "--mirror", type=on_off, default=None, metavar="on|off", help="override inference.mirror of every run"
    )
    parser.add_argument(
        "--et-min-voxels",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="override inference.et_min_voxels of every run",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument("--workers", type=non_negative_int, default=2, help="processes reading cases (default: 2)")
    parser.add_argument("--title", default=None, help="title of the table and the figures")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = evaluate_runs(
            args.runs, args.out, ensembles=args.ensemble, checkpoint=args.checkpoint, mirror=args.mirror,
            et_min_voxels=args.et_min_voxels, device=args.device, workers=args.workers, title=args.title,
        )  # fmt: skip
    except (EvaluationSetupError, RunError) as err:
        for line in str(err).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 1
    print(results["markdown"], end="")
    print(f"\nFigure: {results['figure']}; curves: {results['curves']}; tables: {Path(args.out) / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

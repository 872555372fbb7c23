"""Measure a model on real labelled exams, beside the FLAIR-threshold baseline: Dice and HD95 of WT, TC and ET.

    python experiments/real_exam.py                      # the shipped model on ../shared/data/real2020/BraTS20_Training_990
    python experiments/real_exam.py --ckpt outputs/train/runs/<run>/checkpoints/best.ckpt --out results/real_exam
    python experiments/real_exam.py --ckpt a.ckpt b.ckpt c.ckpt --case /data/BraTS20_Training_001   # an ensemble
    python experiments/real_exam.py --ckpt best.ckpt --case ../shared/data/brats18 --lesionwise     # a whole folder
    python experiments/real_exam.py --ckpt best.ckpt --case ../shared/data/brats18 --cases RUN/split.json
    python experiments/real_exam.py --baseline-only --case ../shared/data/brats18                  # no model

Segments each case with the ``Predictor`` that ``predict.py`` uses, built once (the model shipped
with the package when no ``--ckpt`` is given, whose notice it prints; the average of several
checkpoints when several are given), with each checkpoint's test-time settings unless
``--overlap`` or ``--mirror`` say otherwise. Beside the model it scores the FLAIR-threshold
baseline (``tumorseg.evaluate.baseline.flair_threshold``: no learning, a whole tumour only), the
floor a learned model must beat. Both are scored against the case's label with
``tumorseg.evaluate.region_metrics`` (BraTS's Dice and HD95) and, with ``--lesionwise``, with the
BraTS 2023 lesion-wise Dice and HD95 (``tumorseg.evaluate.lesionwise_case``); the baseline's TC
and ET are not scored ("-").

``--case`` is one labelled case folder, or a dataset root with several (any layout tumorseg
reads; ``--cases`` picks some of them). Writes into ``--out`` (default
``outputs/real_exam/<case_id or folder name>``): ``<case_id>.nii.gz`` (the model's segmentation,
in the case's label values), ``baseline/<case_id>.nii.gz`` (the baseline's whole tumour, as
edema), ``cases.csv`` (one row per case, method and region), ``metrics.json`` (the values, the
models, their settings and the timings), ``summary.md`` (the printed tables) and the overlays
(reference and prediction on the FLAIR at the slice with the most reference tumour):
``overlay.png`` for one case, ``overlays/<case_id>.png`` for a folder. For one case the table has
a row per method; for a folder, the mean and the median over the cases per method and region.
Real exams are a measurement, not a benchmark: report them, never tune to them.
Exit status 1 when a case of a folder could not be scored (the others are), 2 when nothing could
start (no such case folder, no label, a bad checkpoint).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tumorseg.checkpoints import registered_models, registry_file, sha256_file, shipped_model
from tumorseg.cli import EXIT_INCOMPLETE, EXIT_OK, add_debug_option, describe_os_error, on_off, run_command
from tumorseg.data.layouts import select_cases
from tumorseg.evaluate import LESIONWISE_METRICS, METRICS, TASKS, lesionwise_case, region_metrics, summarise
from tumorseg.evaluate.baseline import THRESHOLD, flair_threshold
from tumorseg.io import atomic_write, read_label, spacing, write_atomic, write_nifti
from tumorseg.labels import (
    REGION_CLASSES,
    REGION_NAMES,
    REGION_PAINTING,
    REGIONS,
    from_internal,
    to_internal,
    volumes_cm3,
)
from tumorseg.plots import save_figure, segmentation_panel
from tumorseg.predict import Predictor
from tumorseg.predict.cases import InputCase, find_cases, read_case
from tumorseg.predict.writers import write_label

ROOT = Path(__file__).resolve().parents[1]
# the shared test data beside the repository, as the tests find it
SHARED_DATA = Path(os.environ.get("TUMORSEG_SHARED_DATA") or ROOT.parent / "shared" / "data")
DEFAULT_CASE = SHARED_DATA / "real2020" / "BraTS20_Training_990"
# what metrics.json reports of region_metrics for one case, with names for the tables
COLUMNS = {"dice": "Dice", "hd95": "HD95 mm", "pred_volume_cm3": "predicted cm3", "ref_volume_cm3": "reference cm3"}
LESION_COLUMNS = {"lesion_dice": "lesion Dice", "lesion_hd95": "lesion HD95 mm"}
BASELINE = "FLAIR threshold (no learning)"
# the methods as cases.csv and metrics.json name them
MODEL, BASELINE_KEY = "model", "baseline"
# the baseline predicts the whole tumour only, painted as a whole tumour is (edema)
BASELINE_REGIONS = {"wt": REGION_CLASSES["wt"]}
BASELINE_CLASS = dict(REGION_PAINTING)["wt"]
STATISTICS = ("mean", "median")


def format_value(metric: str, value: float | None) -> str:
    """A table cell: Dice to 4 decimals, distances and volumes to 2, "-" where a method does not score."""
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.4f}" if metric in ("dice", "lesion_dice") else f"{value:.2f}"


def markdown_table(
    rows: list[tuple[tuple[str, ...], dict[str, dict[str, float]]]],
    metrics: tuple[str, ...],
    first: tuple[str, ...] = ("method",),
    volumes: bool = False,
) -> str:
    """A row per entry of ``rows`` (its leading cells, ``{region: {metric: value}}``), a column per
    metric of ``metrics`` and region; a region or metric that an entry lacks is "-". With
    ``volumes``, the predicted volume of each region too."""
    names = {**COLUMNS, **LESION_COLUMNS}
    columns = [(region, metric) for metric in metrics for region in REGIONS]
    headers = [f"{REGION_NAMES[region]} {names[metric]}" for region, metric in columns]
    if volumes:
        columns += [(region, "pred_volume_cm3") for region in REGIONS]
        headers += [f"{REGION_NAMES[region]} cm3" for region in REGIONS]
    lines = ["| " + " | ".join([*first, *headers]) + " |", "|" + "---|" * len(first) + "---:|" * len(columns)]
    for leading, values in rows:
        cells = [format_value(metric, values.get(region, {}).get(metric)) for region, metric in columns]
        lines.append("| " + " | ".join([*leading, *cells]) + " |")
    return "\n".join(lines)


def model_name(specs: list, shipped) -> str:
    """How the tables name the model: the shipped model's name, the checkpoint, or the ensemble's size."""
    if shipped is not None:
        return f"shipped model {shipped.name}"
    return str(specs[0]) if len(specs) == 1 else f"ensemble of {len(specs)} checkpoints"


def chosen_cases(items: list[InputCase], spec: list[str] | None, root: Path) -> list[InputCase]:
    """The cases of ``items`` that ``--cases`` names (ids, or one file that ``select_cases`` reads), in its order."""
    if not spec:
        return items
    is_file = len(spec) == 1 and (Path(spec[0]).suffix in (".json", ".txt") or Path(spec[0]).is_file())
    try:
        wanted = select_cases(spec[0] if is_file else spec)
    except ValueError as err:
        raise ValueError(f"--cases {' '.join(spec)}: {err}") from err
    by_id = {item.case_id: item for item in items}
    unknown = [case_id for case_id in wanted if case_id not in by_id]
    if unknown:
        raise ValueError(
            f"--cases: {len(unknown)} case(s) are not in --case {root}: {unknown[:5]}; check the folder or the list."
        )
    return [by_id[case_id] for case_id in dict.fromkeys(wanted)]


def score_case(
    item: InputCase, predictor: Predictor | None, out: Path, overlay: Path, args: argparse.Namespace, echo=None
) -> dict:
    """Segment one case with the model (unless there is none) and the baseline, score both, write
    the segmentations and the overlay.

    Returns:
        ``"case_id"``; ``"rows"``, its rows of cases.csv; ``"scores"``, method -> region -> metric
        (``region_metrics``; the baseline's WT only); ``"lesionwise"``, the same of the lesion-wise
        metrics (empty without ``--lesionwise``); ``"spacing_mm"``; ``"reference_cm3"``, region ->
        the reference's volume; ``"timings_s"``.
    """
    say = echo or (lambda _: None)
    timings = {}
    start = time.perf_counter()
    arrays, affine, _, header = read_case(item, ("flair",))
    timings["read_baseline"] = time.perf_counter() - start
    start = time.perf_counter()
    baseline = np.where(flair_threshold(arrays["flair"]), BASELINE_CLASS, 0).astype(np.uint8)
    timings["baseline"] = time.perf_counter() - start
    say(f"  read in {timings['read_baseline']:.1f} s, FLAIR thresholded in {timings['baseline']:.1f} s")
    prediction = None
    if predictor is not None:
        prepared = predictor.reader(item)
        timings["read_preprocess"] = prepared.read_s
        say(f"  read and preprocessed in {prepared.read_s:.1f} s; segmenting ...")
        prediction = predictor.segment(prepared)
        timings["inference"] = prediction.infer_s
        say(f"  segmented in {prediction.infer_s:.1f} s; scoring ...")

    start = time.perf_counter()
    ref_image, ref_values = read_label(item.reference)
    reference = to_internal(ref_values, item.convention, source=str(item.reference))
    voxel_mm = spacing(ref_image)
    scores = {BASELINE_KEY: region_metrics(baseline, reference, voxel_mm, BASELINE_REGIONS)}
    if prediction is not None:
        scores = {MODEL: region_metrics(prediction.label, reference, voxel_mm), **scores}
    lesionwise = {}
    if args.lesionwise:
        lesionwise[BASELINE_KEY] = {
            region: score.metrics()
            for region, score in lesionwise_case(baseline, reference, voxel_mm, args.task, BASELINE_REGIONS).items()
        }
        if prediction is not None:
            model_scores = lesionwise_case(prediction.label, reference, voxel_mm, args.task)
            lesionwise = {MODEL: {region: s.metrics() for region, s in model_scores.items()}, **lesionwise}
    volumes = volumes_cm3(reference, voxel_mm)
    timings["score"] = time.perf_counter() - start
    say(f"  scored in {timings['score']:.1f} s")

    start = time.perf_counter()
    if prediction is not None:
        write_label(prediction, item.convention, out / f"{item.case_id}.nii.gz")
    write_nifti(from_internal(baseline, item.convention), out / BASELINE_KEY / f"{item.case_id}.nii.gz", affine, header)
    shown, whose = (prediction.label, "prediction") if prediction is not None else (baseline, BASELINE)
    figure = segmentation_panel(
        arrays["flair"][None], shown, reference, modalities=("flair",),
        title=f"{item.case_id}: reference and {whose}",
    )  # fmt: skip
    save_figure(figure, overlay)
    timings["write"] = time.perf_counter() - start

    rows = []
    for method, regions in scores.items():
        for region, values in regions.items():
            row = {"case_id": item.case_id, "method": method, "region": region, **values}
            if args.lesionwise:
                row.update(lesionwise[method][region])
            rows.append(row)
    return {
        "case_id": item.case_id,
        "rows": rows,
        "scores": scores,
        "lesionwise": lesionwise,
        "spacing_mm": list(voxel_mm),
        "reference_cm3": {region: volumes[f"{region}_cm3"] for region in REGIONS},
        "timings_s": timings,
    }


def csv_columns(lesionwise: bool) -> tuple[str, ...]:
    """cases.csv's columns: case, method, region, the whole-volume metrics, the lesion-wise ones."""
    return ("case_id", "method", "region", *METRICS, *(LESIONWISE_METRICS if lesionwise else ()))


def write_cases_csv(rows: list[dict], path: Path, lesionwise: bool) -> Path:
    """One line per case, method and region; NaN is written ``nan``."""
    with atomic_write(path) as file:
        writer = csv.DictWriter(file, fieldnames=csv_columns(lesionwise), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def summaries(rows: list[dict], methods: list[str], mode: str) -> dict[str, dict]:
    """method -> region -> metric -> ``{"mean", "median", "std"}`` over the cases (``{"total"}`` for lesion counts)."""
    regions = {MODEL: REGIONS, BASELINE_KEY: tuple(BASELINE_REGIONS)}
    return {
        method: summarise([row for row in rows if row["method"] == method], mode, regions[method]) for method in methods
    }


def statistic_rows(summary: dict[str, dict], labels: dict[str, str], metrics: tuple[str, ...]) -> list:
    """The rows of ``markdown_table`` for the mean and the median of each method."""
    return [
        (
            (labels[method], statistic),
            {
                region: {metric: stats[metric][statistic] for metric in metrics}
                for region, stats in summary[method].items()
            },
        )
        for method in summary
        for statistic in STATISTICS
    ]


def _json(value):
    # JSON has no NaN: undefined metrics (a sensitivity without reference tumour) become null
    if isinstance(value, dict):
        return {key: _json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def load_predictor(args: argparse.Namespace) -> tuple[Predictor | None, object, list]:
    """The predictor of ``--ckpt`` (the shipped model, whose notice is printed, without it), the
    shipped model or None, and the checkpoints; no predictor with ``--baseline-only``."""
    if args.baseline_only:
        return None, None, []
    shipped = None
    if args.ckpt:
        specs = args.ckpt
    else:
        if not registered_models():
            raise ValueError(f"{registry_file()} lists no shipped model: give a checkpoint with --ckpt PATH.")
        shipped = shipped_model()
        print(shipped.banner(), flush=True)
        specs = [shipped.path]
    started = time.perf_counter()
    predictor = Predictor.from_checkpoints(
        specs, overlap=args.overlap, mirror=args.mirror, wt_min_fraction=args.wt_min_fraction, device=args.device
    )
    print(f"Loaded {len(specs)} model(s) in {time.perf_counter() - started:.1f} s, on {predictor.device}:")
    for line in predictor.describe():
        print(f"  {line}")
    return predictor, shipped, specs


def score_folder(
    items: list[InputCase], predictor: Predictor | None, out: Path, methods: list[str], args: argparse.Namespace
) -> tuple[list[dict], dict[str, str]]:
    """``score_case`` of every case under a progress bar, one line each; the results, and why the failed ones failed."""
    results, failed = [], {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("scoring", total=len(items))
        for item in items:
            bar.update(task, description=item.case_id)
            try:
                result = score_case(item, predictor, out, out / "overlays" / f"{item.case_id}.png", args)
            except (ValueError, RuntimeError, OSError) as err:
                failed[item.case_id] = describe_os_error(err) if isinstance(err, OSError) else str(err)
                bar.console.print(f"{escape(item.case_id)}: failed: {escape(failed[item.case_id])}", highlight=False)
            else:
                results.append(result)
                dice = ", ".join(f"{m} {format_value('dice', result['scores'][m]['wt']['dice'])}" for m in methods)
                bar.console.print(f"{escape(item.case_id)}: WT Dice {dice}", highlight=False)
            bar.advance(task)
    return results, failed


def case_tables(result: dict, labels: dict[str, str], methods: list[str], args) -> list[tuple[str, str]]:
    """(title, Markdown table) of one case: a row per method, and the reference's volumes."""
    reference = {region: {"pred_volume_cm3": cm3} for region, cm3 in result["reference_cm3"].items()}
    rows = [((labels[m],), result["scores"][m]) for m in methods] + [(("reference",), reference)]
    tables = [("", markdown_table(rows, ("dice", "hd95"), volumes=True))]
    if args.lesionwise:
        rows = [((labels[m],), result["lesionwise"][m]) for m in methods]
        tables.append((f"BraTS {args.task} lesion-wise", markdown_table(rows, tuple(LESION_COLUMNS))))
    return tables


def folder_tables(summary: dict, lesion_summary: dict | None, cases: int, labels: dict[str, str], args) -> list:
    """(title, Markdown table) of a folder: the mean and median of each method."""
    first = ("method", "statistic")
    rows = statistic_rows(summary, labels, ("dice", "hd95"))
    tables = [(f"Over {cases} case(s)", markdown_table(rows, ("dice", "hd95"), first=first))]
    if lesion_summary is not None:
        rows = statistic_rows(lesion_summary, labels, tuple(LESION_COLUMNS))
        title = f"BraTS {args.task} lesion-wise, over {cases} case(s)"
        tables.append((title, markdown_table(rows, tuple(LESION_COLUMNS), first=first)))
    return tables


def labelled_cases(case_dir: Path, cases: str | None) -> tuple[list, list, bool]:
    """The labelled cases to score under ``case_dir`` (those of ``cases`` if given), the problems of
    the folder, and whether it is a folder of several cases."""
    if not case_dir.is_dir():
        raise ValueError(
            f"--case {case_dir}: no such folder. Give a labelled case folder (a BraTS training case: its four "
            f"images and its label) with --case DIR."
        )
    found, problems = find_cases(case_dir)
    folder = len(found) > 1
    items = chosen_cases(found, cases, case_dir)
    unlabelled = [item.case_id for item in items if item.reference is None]
    if unlabelled and not folder:
        raise ValueError(f"--case {case_dir}: case {unlabelled[0]} has no label file to score against.")
    if unlabelled:
        raise ValueError(
            f"--case {case_dir}: {len(unlabelled)} case(s) have no label file to score against: {unlabelled[:5]}; "
            f"choose labelled ones with --cases."
        )
    return items, problems, folder


def methods_record(predictor, shipped) -> dict:
    """What ``metrics.json`` records of the methods: the models (files, SHA-256, settings), the
    shipped model's provenance, and the baseline."""
    return {
        "models": [{"path": name, "sha256": sha256_file(name)} for name in predictor.names] if predictor else [],
        "shipped_model": None
        if shipped is None
        else {"name": shipped.name, "sha256": shipped.sha256, "training_data": shipped.training_data},
        "device": None if predictor is None else str(predictor.device),
        "settings": [] if predictor is None else predictor.describe(),
        "baseline": {
            "name": BASELINE,
            "function": "tumorseg.evaluate.baseline.flair_threshold",
            "threshold": THRESHOLD,
        },
    }


def measure(args: argparse.Namespace) -> int:
    """Segment the case(s), score them, print the tables and write the outputs (see the module docstring)."""
    started = time.perf_counter()
    case_dir = args.case.expanduser()
    items, problems, folder = labelled_cases(case_dir, args.cases)
    out = (args.out or ROOT / "outputs" / "real_exam" / (case_dir.name if folder else items[0].case_id)).expanduser()

    predictor, shipped, specs = load_predictor(args)
    load_s = time.perf_counter() - started
    labels = {MODEL: model_name(specs, shipped), BASELINE_KEY: BASELINE}
    methods = [BASELINE_KEY] if predictor is None else [MODEL, BASELINE_KEY]
    content = methods_record(predictor, shipped)
    timings = {"load_models": load_s} if predictor else {}

    if not folder:
        (item,) = items
        print(f"Reading {item.case_id} ({case_dir}) ...", flush=True)
        result = score_case(item, predictor, out, out / "overlay.png", args, echo=lambda line: print(line, flush=True))
        results, failed = [result], {}
        tables = case_tables(result, labels, methods, args)
        content = {"case_id": item.case_id, "case": str(case_dir), "reference": str(item.reference), **content}
        content["spacing_mm"] = result["spacing_mm"]
        if MODEL in result["scores"]:
            content["regions"] = {r: {m: v[m] for m in COLUMNS} for r, v in result["scores"][MODEL].items()}
        content["baseline"]["regions"] = {
            r: {m: v[m] for m in COLUMNS} for r, v in result["scores"][BASELINE_KEY].items()
        }
        if args.lesionwise:
            content["lesionwise"] = {"task": args.task, **result["lesionwise"]}
        timings.update(result["timings_s"])
    else:
        print(f"{len(items)} labelled case(s) in {case_dir}", flush=True)
        results, failed = score_folder(items, predictor, out, methods, args)
        if not results:
            raise ValueError(f"--case {case_dir}: no case could be scored: {failed}")
        rows = [row for result in results for row in result["rows"]]
        summary = summaries(rows, methods, "volume")
        lesion_summary = summaries(rows, methods, "lesionwise") if args.lesionwise else None
        tables = folder_tables(summary, lesion_summary, len(results), labels, args)
        content = {"folder": str(case_dir), "cases": [result["case_id"] for result in results], **content}
        content.update(summary=summary, failed=failed, skipped=[str(problem) for problem in problems])
        if args.lesionwise:
            content["lesionwise"] = {"task": args.task, "summary": lesion_summary}
        for result in results:
            for name, seconds in result["timings_s"].items():
                timings[name] = timings.get(name, 0.0) + seconds
    print()
    for title, table in tables:
        print((f"{title}:\n\n" if title else "") + table + "\n", flush=True)

    content["timings_s"] = {**timings, "total": time.perf_counter() - started}
    rows = [row for result in results for row in result["rows"]]
    cases_csv = write_cases_csv(rows, out / "cases.csv", args.lesionwise)
    metrics_json = write_atomic(out / "metrics.json", json.dumps(_json(content), indent=2, allow_nan=False) + "\n")
    summary_md = write_summary(out / "summary.md", case_dir, results, failed, labels, methods, tables)
    print(
        f"Wrote {metrics_json}, {cases_csv}, {summary_md}, the segmentations and the overlays in {out} "
        f"({time.perf_counter() - started:.1f} s in all)"
    )
    if failed:
        print(f"{len(failed)} case(s) could not be scored:", file=sys.stderr)
        for case_id, why in failed.items():
            print(f"- {case_id}: {why}", file=sys.stderr)
    return EXIT_INCOMPLETE if failed else EXIT_OK


def write_summary(
    path: Path,
    case_dir: Path,
    results: list[dict],
    failed: dict[str, str],
    labels: dict[str, str],
    methods: list[str],
    tables: list[tuple[str, str]],
) -> Path:
    """summary.md: what was measured, the tables, the cases that failed."""
    ids = [result["case_id"] for result in results]
    lines = [f"# Real exams: {case_dir}", "", f"{len(ids)} case(s) scored: {', '.join(ids)}."]
    if MODEL in methods:
        lines.append(f"Model: {labels[MODEL]}.")
    lines += [
        f"Baseline, {BASELINE}: the FLAIR z-scored over the brain (its positive voxels), z > "
        f'{THRESHOLD}, the largest (6-)connected component as the whole tumour; no TC and ET ("-").',
        "",
    ]
    for title, table in tables:
        lines += ([f"## {title}", ""] if title else []) + [table, ""]
    if failed:
        lines += [f"{len(failed)} case(s) could not be scored:", ""]
        lines += [f"- {case_id}: {why}" for case_id, why in failed.items()] + [""]
    return write_atomic(path, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python experiments/real_exam.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--ckpt", nargs="+", metavar="PATH",
        help="checkpoint file(s) or https URL(s); several are averaged (an ensemble). Default: the shipped model",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-only", action="store_true", help="score the FLAIR-threshold baseline alone, without any model"
    )
    parser.add_argument(
        "--case", type=Path, default=DEFAULT_CASE, help="a labelled case folder, or a dataset root of labelled cases"
    )
    parser.add_argument(
        "--cases", nargs="+", metavar="ID",
        help="score only these cases of --case: ids, or one file (a run's split.json: its validation cases; a "
        "JSON list or a text file of ids)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="output folder. Default: outputs/real_exam/<case_id or folder name>")
    parser.add_argument(
        "--lesionwise", action="store_true", help="also the BraTS 2023 lesion-wise Dice and HD95 of each region"
    )
    parser.add_argument("--task", choices=TASKS, default="GLI", help="the BraTS task of the lesion-wise metrics")
    parser.add_argument("--overlap", type=float, help="sliding-window overlap. Default: each checkpoint's")
    parser.add_argument(
        "--mirror", type=on_off, help="the 8-flip test-time augmentation, on or off. Default: each checkpoint's"
    )
    parser.add_argument(
        "--wt-min-fraction", type=float, metavar="F",
        help="remove pieces of tumour smaller than F of the largest (0: none, 1: keep the largest). Default: each "
        "checkpoint's",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda:1, ...")
    add_debug_option(parser)
    args = parser.parse_args(argv)
    model_options = (args.overlap, args.mirror, args.wt_min_fraction)
    if args.baseline_only and (args.ckpt or any(option is not None for option in model_options)):
        parser.error("--baseline-only runs no model: leave out --ckpt, --overlap, --mirror and --wt-min-fraction")
    return run_command(lambda: measure(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())

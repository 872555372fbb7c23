"""The command line of the evaluation, ``python -m tumorseg.evaluate`` (examples in ``tumorseg.evaluate``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from tumorseg.cli import EXIT_INCOMPLETE, EXIT_OK, add_debug_option, positive_int, prog_name, run_command
from tumorseg.data.layouts import select_cases
from tumorseg.evaluate.folder import LABEL_CHOICES, evaluate_folder
from tumorseg.evaluate.lesionwise import TASKS
from tumorseg.evaluate.reports import MODES, print_result


def main(argv: Sequence[str] | None = None) -> int:
    """``tumorseg-evaluate`` (``python -m tumorseg.evaluate``): evaluate, write the CSV and JSON, print the summary.

    Returns:
        0 when every case was evaluated, 1 when a case has no counterpart or failed, 2 when the
        inputs cannot be used at all or the outputs cannot be written (``tumorseg.cli.run_command``).
    """
    parser = argparse.ArgumentParser(
        prog=prog_name("tumorseg.evaluate"),
        description="BraTS evaluation (Dice, HD95, sensitivity, specificity, volumes of WT, TC, ET; with "
        "--labels brats2024 of ET, NETC, SNFH, RC, TC, WT; or the BraTS 2023 lesion-wise Dice and HD95) of "
        "predicted label maps against references.",
    )
    parser.add_argument("--pred", required=True, help="folder of <case_id>.nii.gz label maps, or one file")
    parser.add_argument("--ref", required=True, help="dataset root (BraTS 2020/2021/2023, MSD) or folder of label maps")
    parser.add_argument(
        "--labels",
        choices=LABEL_CHOICES,
        default="auto",
        help="label convention of the plain label files (default: auto, from the dataset or the values found); "
        "brats2024 for BraTS 2024 post-treatment labels, also of a dataset named like 2023's",
    )
    parser.add_argument(
        "--metrics",
        choices=MODES,
        default="volume",
        help="volume: whole-volume metrics per region; lesionwise: the BraTS 2023 lesion-wise Dice, HD95 "
        "and lesion counts (default: %(default)s)",
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        help="BraTS task of the lesion-wise metrics: its dilation and smallest scored lesion (default: GLI)",
    )
    parser.add_argument(
        "--out",
        help="CSV to write (default: metrics.csv in the pred folder, metrics_lesionwise.csv for --metrics "
        "lesionwise); the JSON goes next to it",
    )
    parser.add_argument(
        "--cases",
        help="evaluate only these cases: a run's split.json (its validation cases), a JSON list or a text file of ids",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=min(8, os.cpu_count() or 1),
        help="parallel processes (default: %(default)s)",
    )
    add_debug_option(parser)
    args = parser.parse_args(argv)
    if args.task is not None and args.metrics != "lesionwise":
        parser.error("--task applies to --metrics lesionwise only")
    return run_command(lambda: _evaluate(args), debug=args.debug)


def _evaluate(args: argparse.Namespace) -> int:
    cases = select_cases(args.cases) if args.cases else None
    result = evaluate_folder(
        args.pred,
        args.ref,
        labels=args.labels,
        out=args.out,
        workers=args.workers,
        cases=cases,
        metrics=args.metrics,
        task=args.task or "GLI",
    )
    console = Console(soft_wrap=True)
    console.print(f"labels: {escape(result.labels_reason)}", highlight=False)
    print_result(result, console)
    console.print(f"wrote {escape(str(result.csv_path))} and {escape(str(result.json_path))}", highlight=False)
    return EXIT_OK if result.ok else EXIT_INCOMPLETE

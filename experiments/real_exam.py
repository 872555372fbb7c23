"""Measure a model on a real labelled exam: Dice and HD95 of WT, TC and ET, and their volumes.

    python experiments/real_exam.py                      # the shipped model on ../shared/data/real2020/BraTS20_Training_990
    python experiments/real_exam.py --ckpt outputs/train/runs/<run>/checkpoints/best.ckpt --out results/real_exam
    python experiments/real_exam.py --ckpt a.ckpt b.ckpt c.ckpt --case /data/BraTS20_Training_001   # an ensemble

Segments the case with the ``Predictor`` that ``predict.py`` uses (the model shipped with the
package when no ``--ckpt`` is given, whose notice it prints; the average of several checkpoints
when several are given), with each checkpoint's test-time settings unless ``--overlap`` or
``--mirror`` say otherwise. Scores the segmentation against the case's label with
``tumorseg.evaluate.region_metrics`` (BraTS's Dice and HD95) and prints a Markdown table, one row
per region. Writes into ``--out`` (default ``outputs/real_exam/<case_id>``): ``metrics.json`` (the
values, the models, their settings and the timings), ``<case_id>.nii.gz`` (the segmentation, in the
case's label values) and ``overlay.png`` (reference and prediction on the FLAIR at the slice with
the most reference tumour). One exam is a measurement, not a benchmark: report it, never tune to it.
Exit status 2 when nothing could start (no such case folder, no label, a bad checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tumorseg.cli import add_debug_option, on_off, run_command
from tumorseg.evaluate import region_metrics
from tumorseg.io import read_label, spacing, write_atomic
from tumorseg.labels import REGION_NAMES, REGIONS, to_internal
from tumorseg.plots import save_figure, segmentation_panel
from tumorseg.predict import Predictor
from tumorseg.predict.cases import find_cases
from tumorseg.predict.checkpoints import sha256_file
from tumorseg.predict.pretrained import registered_models, registry_file, shipped_model
from tumorseg.predict.writers import write_label

ROOT = Path(__file__).resolve().parents[1]
# the shared test data beside the repository, as the tests find it
SHARED_DATA = Path(os.environ.get("TUMORSEG_SHARED_DATA") or ROOT.parent / "shared" / "data")
DEFAULT_CASE = SHARED_DATA / "real2020" / "BraTS20_Training_990"
# what the table and metrics.json report of region_metrics, with the table's headers
COLUMNS = {"dice": "Dice", "hd95": "HD95 mm", "pred_volume_cm3": "predicted cm3", "ref_volume_cm3": "reference cm3"}


def format_value(metric: str, value: float) -> str:
    """A table cell: Dice to 4 decimals, distances and volumes to 2."""
    return f"{value:.4f}" if metric == "dice" else f"{value:.2f}"


def markdown_table(metrics: dict[str, dict[str, float]]) -> str:
    """One row per region of ``region_metrics``'s result."""
    lines = [
        "| region | " + " | ".join(COLUMNS.values()) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for region in REGIONS:
        cells = [format_value(metric, metrics[region][metric]) for metric in COLUMNS]
        lines.append(f"| {REGION_NAMES[region]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure(args: argparse.Namespace) -> int:
    """Segment the case, score it, print the table and write the outputs (see the module docstring)."""
    started = time.perf_counter()
    case_dir = args.case.expanduser()
    if not case_dir.is_dir():
        raise ValueError(
            f"--case {case_dir}: no such folder. Give a labelled case folder (a BraTS training case: its four "
            f"images and its label) with --case DIR."
        )
    items, _ = find_cases(case_dir)
    if len(items) != 1:
        raise ValueError(f"--case {case_dir} holds {len(items)} cases; give the folder of one case.")
    (item,) = items
    if item.reference is None:
        raise ValueError(f"--case {case_dir}: case {item.case_id} has no label file to score against.")
    out = (args.out or ROOT / "outputs" / "real_exam" / item.case_id).expanduser()

    shipped = None
    if args.ckpt:
        specs = args.ckpt
    else:
        if not registered_models():
            raise ValueError(f"{registry_file()} lists no shipped model: give a checkpoint with --ckpt PATH.")
        shipped = shipped_model()
        print(shipped.banner(), flush=True)
        specs = [shipped.path]
    predictor = Predictor.from_checkpoints(specs, overlap=args.overlap, mirror=args.mirror, device=args.device)
    load_s = time.perf_counter() - started
    print(f"Loaded {len(specs)} model(s) in {load_s:.1f} s, on {predictor.device}:", flush=True)
    for line in predictor.describe():
        print(f"  {line}")

    print(f"Reading {item.case_id} ({case_dir}) ...", flush=True)
    prepared = predictor.reader(item)
    print(f"  read and preprocessed in {prepared.read_s:.1f} s; segmenting ...", flush=True)
    prediction = predictor.segment(prepared)
    print(f"  segmented in {prediction.infer_s:.1f} s; scoring ...", flush=True)

    start = time.perf_counter()
    ref_image, ref_values = read_label(item.reference)
    reference = to_internal(ref_values, item.convention, source=str(item.reference))
    voxel_mm = spacing(ref_image)
    metrics = region_metrics(prediction.label, reference, voxel_mm)
    score_s = time.perf_counter() - start
    print(f"  scored in {score_s:.1f} s\n", flush=True)
    print(markdown_table(metrics) + "\n", flush=True)

    segmentation = write_label(prediction, item.convention, out / f"{item.case_id}.nii.gz")
    figure = segmentation_panel(
        prepared.display[None], prediction.label, reference, modalities=(prepared.display_name.lower(),),
        title=f"{item.case_id}: reference and prediction",
    )  # fmt: skip
    overlay = save_figure(figure, out / "overlay.png")
    content = {
        "case_id": item.case_id,
        "case": str(case_dir),
        "reference": str(item.reference),
        "models": [{"path": name, "sha256": sha256_file(name)} for name in predictor.names],
        "shipped_model": None
        if shipped is None
        else {"name": shipped.name, "sha256": shipped.sha256, "training_data": shipped.training_data},
        "device": str(predictor.device),
        "settings": predictor.describe(),
        "spacing_mm": list(voxel_mm),
        "regions": {region: {metric: metrics[region][metric] for metric in COLUMNS} for region in REGIONS},
        "timings_s": {
            "load_models": load_s,
            "read_preprocess": prepared.read_s,
            "inference": prediction.infer_s,
            "score": score_s,
            "total": time.perf_counter() - started,
        },
    }
    metrics_json = write_atomic(out / "metrics.json", json.dumps(content, indent=2, allow_nan=False) + "\n")
    print(f"Wrote {metrics_json}, {overlay} and {segmentation} ({time.perf_counter() - started:.1f} s in all)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python experiments/real_exam.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--ckpt", nargs="+", metavar="PATH",
        help="checkpoint file(s) or https URL(s); several are averaged (an ensemble). Default: the shipped model",
    )  # fmt: skip
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="a labelled case folder")
    parser.add_argument("--out", type=Path, help="output folder. Default: outputs/real_exam/<case_id>")
    parser.add_argument("--overlap", type=float, help="sliding-window overlap. Default: each checkpoint's")
    parser.add_argument(
        "--mirror", type=on_off, help="the 8-flip test-time augmentation, on or off. Default: each checkpoint's"
    )
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda:1, ...")
    add_debug_option(parser)
    args = parser.parse_args(argv)
    return run_command(lambda: measure(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())

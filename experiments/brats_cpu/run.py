"""The real-data study: every network on the 18 BraTS 2018 exams, 3 folds, from scratch and
from phantom pre-training, with the same budget, one training at a time.

    python experiments/brats_cpu/run.py                                     # all: 3 networks x 3 folds x 2 starts
    python experiments/brats_cpu/run.py --models arunet3d --folds 0 --starts phantom
    python experiments/brats_cpu/run.py --report                            # tables and figures of what has run
    python experiments/brats_cpu/run.py --tag lr3e-3 -- model.optimizer.lr=3e-3    # a variant, kept apart

Each run is ``python train.py experiment=brats_cpu model=<net> data.fold=<fold>`` on the committed
split (``splits_brats18.json``), which starts from ``init_from=phantom-<net>-v2``; ``init_from=null``
for the start from scratch,
as its own process with ``resume=true``: a killed study continues each run from its newest
``last.ckpt``, and a finished run (its ``result.json``) is never trained again. After training,
the run's validation cases are segmented in their source geometry (1 mm, 240x240x155) by
``experiments/real_exam.py`` with the run's final checkpoint, beside the FLAIR-threshold baseline.

Written to ``--out`` (default ``outputs/brats_cpu``): the runs, and ``results.md``/``results.json``
(per run: validation Dice on the recipe's grid at each validation with its time, seconds to each
threshold, final Dice; source-geometry Dice; means over folds) and ``time_to_dice.png``
(validation Dice against seconds, both starts). ``--results DIR`` copies them where they are
committed (``experiments/brats_cpu/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tumorseg.runs.timing import first_reached, read_curve

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

SPLIT = HERE / "splits_brats18.json"
SHARED_DATA = Path(os.environ.get("TUMORSEG_SHARED_DATA") or ROOT.parent / "shared" / "data")
MODELS = ("arunet3d", "linknet3d", "pspnet3d")
STARTS = ("scratch", "phantom")
REGIONS = ("wt", "tc", "et")
THRESHOLDS = (0.5, 0.7, 0.8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--starts", nargs="+", default=list(STARTS), choices=STARTS)
    parser.add_argument("--root", type=Path, default=SHARED_DATA / "brats18", help="the 18 BraTS 2018 exams")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "brats_cpu")
    parser.add_argument("--tag", default="", help="name of a variant (its runs are kept apart from the recipe's)")
    parser.add_argument("--results", type=Path, help="copy results.md/json and the figure here")
    parser.add_argument("--report", action="store_true", help="only write the tables and figures of finished runs")
    parser.add_argument("--no-source", action="store_true", help="skip scoring in the source geometry")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    return parser.parse_args(argv)


def run_name(model: str, fold: int, start: str, tag: str) -> str:
    return f"{model}-{start}{f'-{tag}' if tag else ''}-fold{fold}"


def curve_of(run_root: Path) -> list[dict]:
    """The validation curve of a run and of the runs it resumed, in order; the seconds of a resumed
    run continue from where the killed one stopped."""
    curve, offset = [], 0.0
    for metrics in sorted(run_root.glob("runs/*/csv/metrics.csv")):
        part = read_curve(metrics)
        done = {p["epoch"] for p in curve}
        part = [p for p in part if p["epoch"] not in done]
        for p in part:
            p["seconds"] += offset
        curve += part
        if curve:
            offset = curve[-1]["seconds"]
    return curve


def train_one(args: argparse.Namespace, model: str, fold: int, start: str) -> dict:
    """Train one run (or continue it), then score it; the result is kept in result.json."""
    name = run_name(model, fold, start, args.tag)
    run_root = args.out / name
    done = run_root / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    command = [
        sys.executable, str(ROOT / "train.py"),
        "experiment=brats_cpu", f"model={model}",
        f"data.root={args.root}", f"data.split_file={SPLIT}", f"data.fold={fold}",
        f"task_name={name}", f"paths.log_dir={args.out}", "resume=true",
        "~callbacks.progress_bar", "trainer.enable_progress_bar=false",
        # the recipe starts from the phantom model (init_from=phantom-<net>-v2)
        *(["init_from=null"] if start == "scratch" else []),
        *args.overrides,
    ]  # fmt: skip
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with open(run_root.with_suffix(".log"), "a") as log:
        status = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise SystemExit(f"{name}: train.py exited with status {status}; see {run_root.with_suffix('.log')}")
    wall = time.perf_counter() - started
    curve = curve_of(run_root)
    last = max(run_root.glob("runs/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    result = {"name": name, "model": model, "fold": fold, "start": start, "tag": args.tag,
              "overrides": args.overrides, "wall_s_last_process": wall, "curve": curve,
              "checkpoint": str(last.relative_to(args.out))}  # fmt: skip
    if not args.no_source:
        result["source"] = score_source(args, last, run_root / "source", fold)
    done.write_text(json.dumps(result, indent=1) + "\n")
    return result


def score_source(args: argparse.Namespace, checkpoint: Path, out: Path, fold: int) -> dict:
    """Dice of the fold's validation cases in their source geometry, with ``real_exam.py``."""
    split = json.loads(SPLIT.read_text())[fold]
    command = [sys.executable, str(ROOT / "experiments" / "real_exam.py"), "--ckpt", str(checkpoint),
               "--case", str(args.root), "--cases", *split["val"], "--out", str(out),
               "--wt-min-fraction", "0"]  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "w") as log:
        status = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise SystemExit(f"scoring {checkpoint} exited with status {status}; see {out.with_suffix('.log')}")
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    summary["wt_min_fraction"] = postprocessing_sweep(args.root, out, split["val"])
    return summary


# inference.wt_min_fraction values tried on every run's segmentations, to choose one by cross-validation
FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)


def postprocessing_sweep(root: Path, out: Path, cases: list[str]) -> dict:
    """Mean Dice and HD95 per region of the run's segmentations (written with no piece removed)
    after removing the pieces of tumour under each of ``FRACTIONS`` of the largest."""
    import numpy as np

    from tumorseg.data.layouts import discover
    from tumorseg.data.reading import load_case
    from tumorseg.evaluate import region_metrics
    from tumorseg.io import read_label
    from tumorseg.labels import remove_small_pieces, to_internal

    found = {case.case_id: case for case in discover(root).cases}
    scores = {f"{fraction:g}": {r: {"dice": [], "hd95": []} for r in REGIONS} for fraction in FRACTIONS}
    for case_id in cases:
        case = found[case_id]
        reference = load_case(case).label
        image, values = read_label(out / f"{case_id}.nii.gz")
        predicted = to_internal(np.asarray(values), case.label_convention, source=str(out))
        spacing = tuple(float(s) for s in image.header.get_zooms()[:3])
        for fraction in FRACTIONS:
            kept, _ = remove_small_pieces(predicted, fraction)
            metrics = region_metrics(kept, reference, spacing)
            for region in REGIONS:
                for metric in ("dice", "hd95"):
                    scores[f"{fraction:g}"][region][metric].append(float(metrics[region][metric]))
    return {
        fraction: {region: {metric: float(np.mean(v)) for metric, v in m.items()} for region, m in regions.items()}
        for fraction, regions in scores.items()
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.expanduser().resolve()
    results = []
    for model in args.models:
        for fold in args.folds:
            for start in args.starts:
                done = args.out / run_name(model, fold, start, args.tag) / "result.json"
                if args.report:
                    if done.exists():
                        results.append(json.loads(done.read_text()))
                    continue
                results.append(train_one(args, model, fold, start))
                report(results, args)
    report(results, args)
    return 0


def report(results: list[dict], args: argparse.Namespace) -> None:

    if not results:
        print("No finished run yet.")
        return
    lines = ["| network | start | fold | " + " | ".join(f"s to {t:g}" for t in THRESHOLDS)
             + " | final mean | WT | TC | ET | source WT | source TC | source ET | fit s |",
             "|---|---|---:|" + "---:|" * (len(THRESHOLDS) + 8)]  # fmt: skip
    for r in results:
        curve, last = r["curve"], r["curve"][-1]
        times = [first_reached(curve, t) for t in THRESHOLDS]
        source = [source_dice(r, region) for region in REGIONS]
        lines.append(
            f"| {r['model']} | {r['start']} | {r['fold']} | "
            + " | ".join("never" if t is None else f"{t:.0f}" for t in times)
            + f" | {last['mean']:.3f} | {last['wt']:.3f} | {last['tc']:.3f} | {last['et']:.3f} | "
            + " | ".join("-" if v is None else f"{v:.3f}" for v in source)
            + f" | {last['seconds']:.0f} |"
        )
    lines += ["", "Means over folds:", "",
              "| network | start | folds | final mean | WT | TC | ET | source WT | source TC | source ET |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    groups = {}
    for r in results:
        groups.setdefault((r["model"], r["start"]), []).append(r)
    for (model, start), runs in groups.items():
        finals = [r["curve"][-1] for r in runs]
        cells = [statistics.fmean(f[k] for f in finals) for k in ("mean", *REGIONS)]
        sources = [[source_dice(r, region) for r in runs] for region in REGIONS]
        cells += [statistics.fmean(v) if None not in v else None for v in sources]
        lines.append(f"| {model} | {start} | {len(runs)} | "
                     + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")  # fmt: skip
    lines += postprocessing_table(results)
    publish("\n".join(lines), results, args, "time_to_dice.png", plot)


def publish(text: str, results: list[dict], args: argparse.Namespace, figure: str, draw) -> None:
    """``results.md``, ``results.json`` and the figure ``draw(results, path)`` into ``args.out``, and
    copies of them into ``args.results`` when given."""
    from tumorseg.io import write_atomic

    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "results.md", text + "\n")
    write_atomic(args.out / "results.json", json.dumps(results, indent=1) + "\n")
    draw(results, args.out / figure)
    print(text, flush=True)
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        for name in ("results.md", "results.json", figure):
            shutil.copy2(args.out / name, args.results / name)


def postprocessing_table(results: list[dict]) -> list[str]:
    """Source-geometry Dice and HD95 (means over runs) for each ``inference.wt_min_fraction``."""
    swept = [r for r in results if r.get("source", {}).get("wt_min_fraction")]
    if not swept:
        return []
    lines = ["", f"Pieces of tumour under a fraction of the largest removed (inference.wt_min_fraction), "
             f"source geometry, mean over {len(swept)} run(s):", "",
             "| wt_min_fraction | WT Dice | TC Dice | ET Dice | WT HD95 mm | TC HD95 mm | ET HD95 mm |",
             "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for fraction in swept[0]["source"]["wt_min_fraction"]:
        cells = [statistics.fmean(r["source"]["wt_min_fraction"][fraction][region][metric] for r in swept)
                 for metric in ("dice", "hd95") for region in REGIONS]  # fmt: skip
        lines.append(f"| {fraction} | " + " | ".join(f"{v:.3f}" for v in cells[:3]) + " | "
                     + " | ".join(f"{v:.1f}" for v in cells[3:]) + " |")  # fmt: skip
    return lines


def source_dice(result: dict, region: str) -> float | None:
    """Mean Dice of the model over the run's validation cases in the source geometry."""
    summary = result.get("source")
    if not summary:
        return None
    return summary["model"][region]["dice"]["mean"]


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tumorseg.plots import save_figure

    models = list(dict.fromkeys(r["model"] for r in results))
    fig, axes = plt.subplots(1, len(models), figsize=(max(6.5, 4.5 * len(models)), 4.4), squeeze=False, sharey=True)
    styles = {"scratch": ("tab:grey", "--"), "phantom": ("tab:red", "-")}
    for ax, model in zip(axes[0], models):
        seen = set()
        for r in (r for r in results if r["model"] == model):
            colour, style = styles.get(r["start"], ("tab:blue", "-"))
            label = (
                None
                if r["start"] in seen
                else {"scratch": "from scratch", "phantom": "phantom pre-trained"}.get(r["start"], r["start"])
            )
            seen.add(r["start"])
            ax.plot([p["seconds"] for p in r["curve"]], [p["mean"] for p in r["curve"]], style, color=colour,
                    marker="o", ms=3, label=label)  # fmt: skip
        ax.set_title(model)
        ax.set_xlabel("seconds of training (validation included)")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
        ax.legend(loc="lower right")
    axes[0][0].set_ylabel("validation Dice, mean of WT/TC/ET")
    fig.suptitle("18 real BraTS 2018 exams, 3 folds (12 train / 6 validate), 2-core CPU", fontsize=10)
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

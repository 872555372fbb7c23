"""What makes phantom pre-training help most: AR-UNet fine-tuned on fold 0 of the 18 BraTS 2018
exams with the ``brats_cpu`` recipe, from phantom models that differ from the shipped one in one
thing each (phantom-model epochs, phantom count at the same number of steps), and with other
fine-tuning learning rates; one training at a time, resumable.

    python experiments/pretraining/run.py                        # every variant (about 100 minutes)
    python experiments/pretraining/run.py --variants epochs6     # one of them
    python experiments/pretraining/run.py --report --results experiments/pretraining/results

A variant's phantom model is ``python train.py experiment=phantom_model <its overrides>`` under
``--out``/phantom_<variant> (``resume=true``: a killed one continues), on the phantoms that the
made models use (``$TUMORSEG_CACHE/pretrained/data``). Its fine-tuning is a run of
``experiments/brats_cpu/run.py`` (the same command, tagged with the variant, ``init_from`` its phantom
model), kept with the study's runs in ``--runs`` so that the recipe's and the from-scratch fold-0
runs of that study are the references. Written: ``results.md``/``results.json`` (per variant: the
phantom model's cost, validation Dice at the first validation, seconds to 0.5 and 0.7, final Dice
on the grid and in the source geometry) and ``pretraining.png`` (validation Dice against seconds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("brats_cpu_run", ROOT / "experiments" / "brats_cpu" / "run.py")
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)

FOLD = 0
MODEL = "arunet3d"
# the shipped phantom model's recipe: 96 phantoms (88 train), 15 epochs of 176 steps, about 30 minutes
VARIANTS = {
    "recipe": {"what": "phantom-arunet3d-v2: 96 phantoms, 15 epochs, fine-tuned at 3e-3", "start": "phantom"},
    "scratch": {"what": "no pre-training", "start": "scratch"},
    "epochs6": {"what": "96 phantoms, 6 epochs (2/5 of the steps)", "phantom": ["phantom_epochs.arunet3d=6"]},
    "phantoms24": {
        "what": "24 phantoms (22 train), 60 epochs: the same 2640 steps, a quarter of the variety",
        "phantom": ["data.cases=24", "phantom_epochs.arunet3d=60"],
    },
    "lr1e-2": {"what": "phantom-arunet3d-v2, fine-tuned at 1e-2", "finetune": ["model.optimizer.lr=1e-2"]},
    "lr1e-3": {"what": "phantom-arunet3d-v2, fine-tuned at 1e-3", "finetune": ["model.optimizer.lr=1e-3"]},
}
# the study's runs validated with the post-processing of that time; the same here, to compare
VALIDATION = ["inference.wt_min_fraction=0.1"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--root", type=Path, default=study.SHARED_DATA / "brats18", help="the 18 BraTS 2018 exams")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "pretraining", help="the phantom models")
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "brats_cpu", help="the fine-tuning runs")
    parser.add_argument("--results", type=Path, help="copy results.md/json and the figure here")
    parser.add_argument("--report", action="store_true", help="only write the tables and figures of finished runs")
    return parser.parse_args(argv)


def phantom_model(args: argparse.Namespace, variant: str) -> tuple[Path, dict]:
    """The variant's phantom model (trained first, or continued), and what it cost."""
    from tumorseg.io import cache_root

    task = f"phantom_{variant}"
    done = args.out / f"{task}.json"
    if done.exists():
        record = json.loads(done.read_text())
        return args.out / record["checkpoint"], record
    command = [
        sys.executable, str(ROOT / "train.py"), "experiment=phantom_model", f"model={MODEL}",
        *VARIANTS[variant]["phantom"], f"task_name={task}", f"paths.log_dir={args.out}",
        f"paths.data_dir={cache_root() / 'pretrained' / 'data'}", "resume=true",
        "~callbacks.progress_bar", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    print(f"== {task}: {' '.join(command[1:])}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(args.out / f"{task}.log", "a") as log:
        status = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise SystemExit(f"{task}: train.py exited with status {status}; see {args.out / f'{task}.log'}")
    runs = sorted((args.out / task).glob("runs/*/"))
    # as the made models: the best checkpoint of the last process, else its last
    checkpoint = next(p for p in (runs[-1] / "checkpoints" / n for n in ("best.ckpt", "last.ckpt")) if p.is_file())
    curve = study.curve_of(args.out / task)
    record = {"variant": variant, "overrides": VARIANTS[variant]["phantom"], "checkpoint": str(checkpoint.relative_to(args.out)),
              "fit_s": curve[-1]["seconds"] if curve else None, "wall_s_last_process": time.perf_counter() - started,
              "phantom_val": curve[-1] if curve else None}  # fmt: skip
    done.write_text(json.dumps(record, indent=1) + "\n")
    return checkpoint, record


def run_tag(variant: str) -> str:
    """The tag of the variant's fine-tuning run: none for the study's own recipe and scratch runs."""
    return "" if variant in ("recipe", "scratch") else variant


def fine_tune(args: argparse.Namespace, variant: str) -> dict:
    """The fold-0 run of the real-data study for the variant (trained first, or continued)."""
    spec = VARIANTS[variant]
    tag = run_tag(variant)
    overrides = [*VALIDATION, *spec.get("finetune", [])]
    record = None
    if "phantom" in spec:
        checkpoint, record = phantom_model(args, variant)
        overrides.append(f"init_from={checkpoint}")
    runs = argparse.Namespace(out=args.runs.expanduser().resolve(), root=args.root, tag=tag, overrides=overrides,
                              no_source=False)  # fmt: skip
    result = study.train_one(runs, MODEL, FOLD, spec.get("start", "phantom"))
    return {**result, "variant": variant, "what": spec["what"], "phantom_model": record}


def finished(args: argparse.Namespace, variant: str) -> dict | None:
    spec = VARIANTS[variant]
    tag = run_tag(variant)
    done = args.runs / study.run_name(MODEL, FOLD, spec.get("start", "phantom"), tag) / "result.json"
    if not done.exists():
        return None
    record = args.out / f"phantom_{variant}.json"
    phantom = json.loads(record.read_text()) if record.exists() else None
    return {**json.loads(done.read_text()), "variant": variant, "what": spec["what"], "phantom_model": phantom}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.expanduser().resolve()
    results = []
    for variant in args.variants:
        result = finished(args, variant) if args.report else fine_tune(args, variant)
        if result is not None:
            results.append(result)
    report(results, args)
    return 0


def report(results: list[dict], args: argparse.Namespace) -> None:

    if not results:
        print("No finished run yet.")
        return
    lines = ["| variant | what | phantom model min | first validation (s) | s to 0.5 | s to 0.7 | final mean | WT | TC | ET "
             "| source WT | source TC | source ET | fit s |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        curve, last = r["curve"], r["curve"][-1]
        phantom = r["phantom_model"]
        minutes = (
            "-" if r["variant"] == "scratch" else "27 (shipped)" if phantom is None else f"{phantom['fit_s'] / 60:.0f}"
        )
        reach = [study.first_reached(curve, t) for t in (0.5, 0.7)]
        source = [study.source_dice(r, region) for region in study.REGIONS]
        lines.append(
            f"| {r['variant']} | {r['what']} | {minutes} | {curve[0]['mean']:.3f} ({curve[0]['seconds']:.0f}) | "
            + " | ".join("never" if t is None else f"{t:.0f}" for t in reach)
            + f" | {last['mean']:.3f} | {last['wt']:.3f} | {last['tc']:.3f} | {last['et']:.3f} | "
            + " | ".join("-" if v is None else f"{v:.3f}" for v in source)
            + f" | {last['seconds']:.0f} |"
        )
    study.publish("\n".join(lines), results, args, "pretraining.png", plot)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tumorseg.plots import save_figure

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for r in results:
        style = {"recipe": ("-", 2.2, "black"), "scratch": ("--", 1.6, "tab:grey")}.get(r["variant"], ("-", 1.2, None))
        ax.plot([p["seconds"] for p in r["curve"]], [p["mean"] for p in r["curve"]], style[0], lw=style[1],
                color=style[2], marker="o", ms=3, label=f"{r['variant']}: {r['what']}")  # fmt: skip
    ax.set_xlabel("seconds of fine-tuning (validation included; the phantom model's time not counted)")
    ax.set_ylabel("validation Dice, mean of WT/TC/ET")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("AR-UNet, fold 0 of the 18 BraTS 2018 exams (12 train / 6 validate), 2-core CPU", fontsize=9)
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

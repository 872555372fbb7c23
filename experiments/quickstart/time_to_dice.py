"""Time to Dice: how long each network takes to learn the quick start, and how much the result
moves with the seed.

    python experiments/quickstart/time_to_dice.py                                  # 3 networks x 3 seeds, the quick start
    python experiments/quickstart/time_to_dice.py --models pspnet3d --seeds 1234 --thresholds 0.5 0.8 0.85 0.9
    python experiments/quickstart/time_to_dice.py -- trainer.max_epochs=20         # Hydra overrides after --

Each run is ``python train.py model=<net> seed=<seed>`` (plus the overrides), trained one after
another in this process on the same phantoms. Printed and written to ``--out``:

* seconds until ``val/dice_mean`` first reaches each threshold, counted from the start of fitting
  (validation included; generating the phantoms and building the cache, done once, are not);
* the final (last epoch) and best ``val/dice_mean``, the final WT/TC/ET, and the spread of the
  final value over the seeds;
* ``time_to_dice.png``: validation Dice against seconds, one line per run.

The times are this machine's: compare them only with runs of the same machine (a benchmark, not
a test). Run it before and after a change to see what the change did to learning. A run that
finished is kept (its ``time_to_dice.json``) and not trained again unless ``--redo`` is given, so a
killed benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from tumorseg.labels import REGIONS
from tumorseg.runs.timing import first_reached, read_curve

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("arunet3d", "linknet3d", "pspnet3d")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1234, 1, 2])
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.5, 0.8, 0.85])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "time_to_dice", help="runs, table and figure")
    parser.add_argument("--redo", action="store_true", help="train again the runs that finished before")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    if any(not 0 < t <= 1 for t in args.thresholds):
        parser.error("--thresholds must lie in (0, 1]")
    return args


def run_one(model: str, seed: int, out: Path, overrides: list[str], redo: bool = False) -> dict:
    from tumorseg.io import write_atomic
    from tumorseg.launch import register_resolvers
    from tumorseg.training.train import train

    register_resolvers()
    run_dir = out / "runs" / f"{model}-seed{seed}"
    done = run_dir / "time_to_dice.json"
    if done.exists() and not redo:
        result = json.loads(done.read_text())
        if result.get("overrides") == overrides:
            print(f"   kept the finished run in {run_dir} (--redo trains it again)", flush=True)
            return result
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished or different run of this network and seed
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"model={model}",
                f"seed={seed}",
                "task_name=time_to_dice",
                f"paths.root_dir={ROOT}",
                *overrides,
            ],
        )
    cfg.paths.output_dir = str(run_dir)
    start = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - start
    curve = read_curve(run_dir / "csv" / "metrics.csv")
    if not curve:
        raise SystemExit(f"{model} seed {seed}: no validation was logged in {run_dir}/csv/metrics.csv.")
    result = {
        "model": model,
        "seed": seed,
        "wall_s": wall,
        "curve": curve,
        "overrides": overrides,
    }
    write_atomic(done, json.dumps(result, indent=1) + "\n")
    return result


def summarise(results: list[dict], thresholds: list[float]) -> list[dict]:
    rows = []
    for r in results:
        curve = r["curve"]
        row = {
            "model": r["model"],
            "seed": r["seed"],
            "final": curve[-1]["mean"],
            "best": max(p["mean"] for p in curve),
        }
        row.update({f"final_{k}": curve[-1][k] for k in REGIONS})
        row.update({f"t{t:g}": first_reached(curve, t) for t in thresholds})
        row["fit_s"], row["wall_s"] = curve[-1]["seconds"], r["wall_s"]
        rows.append(row)
    return rows


def fmt(value: float | None, digits: int = 0) -> str:
    return "never" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict], thresholds: list[float]) -> str:
    head = [
        "network",
        "seed",
        *[f"s to {t:g}" for t in thresholds],
        "final",
        "best",
        "WT",
        "TC",
        "ET",
        "fit s",
        "run s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], str(r["seed"]), *[fmt(r[f"t{t:g}"]) for t in thresholds]]
        cells += [f"{r['final']:.3f}", f"{r['best']:.3f}", *[f"{r[f'final_{k}']:.3f}" for k in REGIONS]]
        cells += [fmt(r["fit_s"]), fmt(r["wall_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| network | final mean | final min | final max | spread (max - min) | last - best, worst |",
        "|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        finals = [r["final"] for r in rows if r["model"] == model]
        drop = min(r["final"] - r["best"] for r in rows if r["model"] == model)
        lines.append(
            f"| {model} | {statistics.fmean(finals):.3f} | {min(finals):.3f} | {max(finals):.3f} | "
            f"{max(finals) - min(finals):.3f} | {drop:+.3f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], thresholds: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tumorseg.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = dict(zip(MODELS, ("tab:blue", "tab:orange", "tab:green")))
    seen = set()
    for r in results:
        curve = r["curve"]
        label = r["model"] if r["model"] not in seen else None
        seen.add(r["model"])
        ax.plot([p["seconds"] for p in curve], [p["mean"] for p in curve], marker="o", ms=3, color=colours[r["model"]],
                label=label, alpha=0.8)  # fmt: skip
    for t in thresholds:
        ax.axhline(t, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("seconds of training (validation included)")
    ax.set_ylabel("validation Dice, mean of WT/TC/ET")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Time to Dice on the quick start, one line per seed")
    save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from tumorseg.io import write_atomic

    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for model in args.models:
        for seed in args.seeds:
            print(f"== {model}, seed {seed}", flush=True)
            results.append(run_one(model, seed, args.out, args.overrides, args.redo))
            # the tables so far, so that a killed benchmark keeps what it measured
            rows = summarise(results, args.thresholds)
            text = table(rows, args.thresholds)
            write_atomic(args.out / "time_to_dice.md", text + "\n")
            write_atomic(args.out / "time_to_dice.json", json.dumps({"rows": rows, "runs": results}, indent=1) + "\n")
            plot(results, args.thresholds, args.out / "time_to_dice.png")
    print(text)
    print(f"\nWritten: {args.out / 'time_to_dice.md'}, time_to_dice.json, time_to_dice.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

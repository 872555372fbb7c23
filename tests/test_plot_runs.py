"""experiments/plot_runs.py on hand-made run directories: CSV logs, one run resumed."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from matplotlib.image import imread

from tumorseg.runs.curves import PAPER_SCORES, load_run, main, paper_curves

REPO = Path(__file__).resolve().parents[1]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS_PER_EPOCH = 8
REGION_KEYS = ("wt", "tc", "et")


def val_metrics(mean: float, *, classes: bool = False, offset: float = 0.0) -> dict[str, float]:
    """Validation metrics of one epoch around ``mean``; many digits, so rounding would show."""
    values = {
        "val/dice_wt": mean + 0.0712345 + offset,
        "val/dice_tc": mean - 0.0123456 + offset,
        "val/dice_et": mean - 0.0588889 + offset,
        "val/dice_mean": mean,
        "val/dice_loss": 1 - mean - 0.0134567,
        "val/loss": 1.2 - mean,
    }
    if classes:
        values["val/dice_ncr"] = mean - 0.1111111
        values["val/dice_ed"] = mean + 0.0432109
    return values


def last_batch_dice_loss(epoch: int) -> float:
    """``train/dice_loss_last_batch`` of the hand-made runs that log it: off the epoch mean, noisy."""
    return 0.8 - 0.0712345 * epoch + (0.0456789 if epoch % 2 else -0.0321987)


def train_metrics(epoch: int, last_batch: bool = False) -> dict[str, float]:
    mean = 0.2 + 0.0912345 * epoch
    values = {
        "train/dice_mean": mean,
        "train/dice_wt": mean + 0.05,
        "train/dice_tc": mean,
        "train/dice_et": mean - 0.05,
        "train/dice_loss": 1 - mean,
        "train/loss": 1.5 - mean,
    }
    if last_batch:
        values["train/dice_loss_last_batch"] = last_batch_dice_loss(epoch)
    return values


def write_metrics_csv(path: Path, epochs: dict[int, dict[str, float]], last_batch: bool = False) -> Path:
    """A metrics.csv as Lightning's CSVLogger writes it: alphabetical columns, sparse rows, the
    learning-rate rows without an epoch, the validation row before the train one of an epoch;
    ``last_batch``: with ``train/dice_loss_last_batch``, as runs since it exists log it."""
    rows = []
    for epoch, val in epochs.items():
        step = (epoch + 1) * STEPS_PER_EPOCH - 1
        rows.append({"lr-AdamW": 0.01 * 0.9**epoch, "step": epoch * STEPS_PER_EPOCH})
        rows.append({"epoch": epoch, "step": step, **val})
        rows.append({"epoch": epoch, "step": step, **train_metrics(epoch, last_batch)})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=sorted({key for row in rows for key in row}), restval="")
        writer.writeheader()
        writer.writerows({k: repr(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    return path


def write_config(run_dir: Path, task_name: str, network: str, labels: str = "regions", max_epochs: int = 10) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "task_name": task_name,
        "seed": 1234,
        "data": {"patch_size": 32, "batch_size": 2},
        "model": {"network": {"name": network, "preset": "light"}, "labels": labels},
        "trainer": {"max_epochs": max_epochs},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def write_run_info(run_dir: Path, previous: list[Path]) -> None:
    info = {"command": ["train.py"], "resumed_from": None, "previous_metrics": [str(p) for p in previous]}
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=1))


# arunet3d: one run; its best mean is at epoch 3, not the last
ARUNET = {e: val_metrics(m) for e, m in enumerate([0.21, 0.43, 0.55, 0.6123456789, 0.58, 0.5987654321])}
# linknet3d: crashed in epoch 4, resumed from the end of epoch 2 into a new run directory, so epoch 3
# is logged in both files: the resumed run's value must win (the first attempt's 0.95 would be the best)
LINKNET_FIRST = {e: val_metrics(m) for e, m in enumerate([0.2, 0.35, 0.47, 0.95])}
LINKNET_RESUMED = {e: val_metrics(m) for e, m in zip(range(3, 7), [0.5, 0.62, 0.6678901234, 0.64])}
# pspnet3d: the paper's softmax scheme with the per-class Dice too, and the last batch's Dice loss
PSPNET = {e: val_metrics(m, classes=True) for e, m in enumerate([0.3, 0.45, 0.7012345678, 0.66, 0.69])}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    arunet = root / "brats_arunet3d/runs/2026-01-01_10-00-00"
    write_config(arunet, "brats_arunet3d", "arunet3d")
    write_metrics_csv(arunet / "csv/metrics.csv", ARUNET)
    write_run_info(arunet, [])

    first = root / "brats_linknet3d/runs/2026-01-02_10-00-00"
    write_config(first, "brats_linknet3d", "linknet3d")
    first_csv = write_metrics_csv(first / "csv/metrics.csv", LINKNET_FIRST)
    linknet = root / "brats_linknet3d/runs/2026-01-03_10-00-00"
    write_config(linknet, "brats_linknet3d", "linknet3d")
    write_metrics_csv(linknet / "csv/metrics.csv", LINKNET_RESUMED)
    write_run_info(linknet, [first_csv])

    pspnet = root / "brats_pspnet3d/runs/2026-01-04_10-00-00"
    write_config(pspnet, "brats_pspnet3d", "pspnet3d", labels="softmax4", max_epochs=5)
    write_metrics_csv(pspnet / "csv/metrics.csv", PSPNET, last_batch=True)
    return {"arunet3d": arunet, "linknet3d": linknet, "pspnet3d": pspnet}


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_rows(markdown: str) -> list[dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").split()) <= {"---", "---:"}
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def assert_png(path: Path, width: int = 1320) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE
    assert imread(path).shape[:2] == (504, width)  # 11 (the paper's figure: 15) x 4.2 inches at 120 dpi


def expected(epochs: dict[int, dict[str, float]]) -> dict:
    last = epochs[max(epochs)]
    best = max(epochs, key=lambda e: epochs[e]["val/dice_mean"])
    return {"last": last, "best_epoch": best, "best": epochs[best]["val/dice_mean"]}


def test_figures_table_and_json(runs, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run_main(capsys, *runs.values(), "--out", out)
    assert code == 0, stderr

    for name in ("brats_arunet3d", "brats_linknet3d", "brats_pspnet3d"):
        assert_png(out / f"{name}_loss_score.png")
    assert_png(out / "comparison.png")
    assert sorted(p.name for p in out.iterdir()) == [
        "brats_arunet3d_loss_score.png",
        "brats_linknet3d_loss_score.png",
        "brats_pspnet3d_loss_score.png",
        "comparison.png",
        "results.json",
        "results.md",
    ]  # no temporary files left behind

    markdown = (out / "results.md").read_text()
    assert markdown in stdout  # printed too
    assert "paper (reported)" not in markdown and "Keras" not in markdown
    rows = {row["network"]: row for row in table_rows(markdown)}
    results = json.loads((out / "results.json").read_text())
    assert "reference" not in results
    summaries = {run["network"]: run for run in results["runs"]}
    assert list(summaries) == ["arunet3d", "linknet3d", "pspnet3d"]  # in the order given

    linknet = {**LINKNET_FIRST, **LINKNET_RESUMED}  # the resumed run's epoch 3 replaces the first attempt's
    cases = {
        "arunet3d": (ARUNET, "regions", "6/10"),
        "linknet3d": (linknet, "regions", "7/10"),
        "pspnet3d": (PSPNET, "softmax4", "5/5"),
    }
    assert set(rows) == set(cases)
    for network, (epochs, labels, epochs_cell) in cases.items():
        row, summary, want = rows[network], summaries[network], expected(epochs)
        assert row["run"] == f"brats_{network}" and row["labels"] == labels and row["epochs"] == epochs_cell
        assert summary["label"] == network
        assert summary["epochs"] == len(epochs) and summary["first_epoch"] == 0
        assert summary["last_epoch"] == summary["final_epoch"] == max(epochs)
        for key in REGION_KEYS:
            assert summary["final"][key] == want["last"][f"val/dice_{key}"]  # exactly the last logged value
            assert row[key.upper()] == f"{want['last'][f'val/dice_{key}']:.4f}"
        assert summary["final"]["mean"] == want["last"]["val/dice_mean"]
        assert row["mean"] == f"{want['last']['val/dice_mean']:.4f}"
        assert summary["final_val_dice_loss"] == want["last"]["val/dice_loss"]
        assert summary["best_mean"] == want["best"] and summary["best_epoch"] == want["best_epoch"]
        assert row["best mean"] == f"{want['best']:.4f}" and row["best epoch"] == str(want["best_epoch"])
        assert Path(summary["figure"]) == out / f"brats_{network}_loss_score.png"
        assert "paper_reported" not in summary
    assert summaries["arunet3d"]["best_epoch"] == 3 and summaries["linknet3d"]["best_epoch"] == 5
    # the resumed run: both metrics files read, oldest first, all 7 epochs
    assert summaries["linknet3d"]["read"] == [
        str(runs["linknet3d"].parent / "2026-01-02_10-00-00/csv/metrics.csv"),
        str(runs["linknet3d"] / "csv/metrics.csv"),
    ]
    # the per-class Dice: only the softmax run logs it, the others show "-"
    assert rows["pspnet3d"]["NCR"] == f"{PSPNET[4]['val/dice_ncr']:.4f}"
    assert rows["pspnet3d"]["ED"] == f"{PSPNET[4]['val/dice_ed']:.4f}"
    assert summaries["pspnet3d"]["final"]["ncr"] == PSPNET[4]["val/dice_ncr"]
    assert rows["arunet3d"]["NCR"] == rows["linknet3d"]["ED"] == "-"
    assert summaries["arunet3d"]["final"]["ncr"] is None
    # the paper's score in results.json; its columns and figures come with --reference paper only
    assert summaries["pspnet3d"]["final_train_dice_loss_last_batch"] == last_batch_dice_loss(4)
    assert summaries["pspnet3d"]["final_train_dice_score_last_batch"] == 1 - last_batch_dice_loss(4)
    assert summaries["pspnet3d"]["final_val_dice_score"] == 1 - PSPNET[4]["val/dice_loss"]
    assert summaries["arunet3d"]["final_train_dice_loss_last_batch"] is None
    assert "1 - Dice loss, val" not in rows["pspnet3d"] and "paper_figure" not in summaries["pspnet3d"]


def test_reference_paper_column(runs, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run_main(capsys, *runs.values(), "--out", out, "--reference", "paper", "--title", "BraTS")
    assert code == 0, stderr
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# BraTS\n")
    rows = {row["network"]: row for row in table_rows(markdown)}
    assert {network: row["paper (reported)"] for network, row in rows.items()} == {
        "arunet3d": "0.6488",
        "linknet3d": "0.6485",
        "pspnet3d": "0.6501",
    }
    note = markdown.split("\n\n")[-1]  # under the table
    assert "paper (reported)" in note and "Keras Dice coefficient" in note and "validation split" in note
    assert "comparable in kind" in note and "not identical in definition" in note
    results = json.loads((out / "results.json").read_text())
    assert {run["network"]: run["paper_reported"] for run in results["runs"]} == PAPER_SCORES
    assert results["reference"]["scores"] == PAPER_SCORES and "SNPD 2022" in results["reference"]["venue"]

    # the paper's own score beside it: 1 - Dice loss at the last epoch, validation and the last training batch
    finals = {"arunet3d": ARUNET[5], "linknet3d": LINKNET_RESUMED[6], "pspnet3d": PSPNET[4]}
    for network, row in rows.items():
        assert row["1 - Dice loss, val"] == f"{1 - finals[network]['val/dice_loss']:.4f}"
    assert rows["pspnet3d"]["1 - Dice loss, train last batch"] == f"{1 - last_batch_dice_loss(4):.4f}"
    assert rows["arunet3d"]["1 - Dice loss, train last batch"] == "-"  # a run from before the metric existed
    assert "the training curve the paper drew" in markdown
    # and the paper's figure per network
    for run in results["runs"]:
        assert run["paper_figure"] == str(out / f"{run['name']}_paper.png")
        assert_png(Path(run["paper_figure"]), width=1800)
        assert run["paper_figure"] in stdout


def test_paper_figure_draws_one_minus_the_last_batch_loss(runs):
    curves = paper_curves(load_run(runs["pspnet3d"]))
    assert list(curves) == ["Dice loss", "Dice score (1 - Dice loss)", "BraTS region Dice (validation)"]
    epochs = range(len(PSPNET))
    loss, score, regions = curves.values()
    assert loss["train (last batch)"] == ({e: last_batch_dice_loss(e) for e in epochs}, "main")
    assert score["train (last batch)"] == ({e: 1 - last_batch_dice_loss(e) for e in epochs}, "main")
    assert score["train (epoch mean)"] == ({e: 1 - train_metrics(e)["train/dice_loss"] for e in epochs}, "thin")
    assert score["val"] == ({e: 1 - PSPNET[e]["val/dice_loss"] for e in epochs}, "main")
    assert list(regions) == ["val WT", "val TC", "val ET", "val mean (WT, TC, ET)"]
    assert regions["val ET"][0] == {e: PSPNET[e]["val/dice_et"] for e in epochs}
    # a run without the metric: the epoch mean and validation only
    older = paper_curves(load_run(runs["arunet3d"]))
    assert list(older["Dice score (1 - Dice loss)"]) == ["train (epoch mean)", "val"]


def test_wandb_without_a_csv_log_is_an_error(tmp_path, capsys):
    # the history is the CSV log's, which every logger config writes; a W&B folder alone is not read
    run = tmp_path / "wandb-only"
    write_config(run, "wandb_only", "pspnet3d")
    (run / "wandb/offline-run-20260101_100000-abc").mkdir(parents=True)
    (run / "wandb/offline-run-20260101_100000-abc/run-abc.wandb").write_bytes(b":W&B")
    code, _, stderr = run_main(capsys, run, "--out", tmp_path / "out")
    assert code == 1 and str(run) in stderr and "no CSV log" in stderr
    assert not (tmp_path / "out").exists()


def test_run_without_metrics_is_an_error(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    write_config(empty, "empty", "arunet3d")
    missing = tmp_path / "missing"
    out = tmp_path / "out"
    code, stdout, stderr = run_main(capsys, runs["arunet3d"], empty, missing, "--out", out)
    assert code == 1 and stdout == ""
    lines = stderr.splitlines()
    assert any(str(empty) in line and "no metrics" in line for line in lines)
    assert any(str(missing) in line and "no such run directory" in line for line in lines)
    assert not out.exists()  # nothing written when a run fails

    # metrics, but neither a Dice loss nor a Dice score
    header_only = tmp_path / "header-only"
    write_config(header_only, "header_only", "arunet3d")
    (header_only / "csv").mkdir()
    (header_only / "csv/metrics.csv").write_text("epoch,step,lr-AdamW\n,0,0.01\n0,7,0.01\n")
    code, _, stderr = run_main(capsys, header_only, "--out", out)
    assert code == 1 and str(header_only) in stderr and "no Dice loss or Dice score" in stderr and "lr-AdamW" in stderr


def test_missing_earlier_metrics_and_shared_task_names(tmp_path, capsys):
    # two runs of the default task_name "train": the figure names keep them apart
    first, second = tmp_path / "runs/2026-01-01_10-00-00", tmp_path / "runs/2026-01-02_10-00-00"
    for run in (first, second):
        write_config(run, "train", "arunet3d")
        write_metrics_csv(run / "csv/metrics.csv", {e: ARUNET[e] for e in (2, 3)})
    write_run_info(second, [tmp_path / "gone/csv/metrics.csv"])  # an earlier run's log deleted since
    out = tmp_path / "out"
    code, _, stderr = run_main(capsys, first, second, "--out", out)
    assert code == 0
    assert "gone/csv/metrics.csv" in stderr and "missing" in stderr  # a warning, not an error
    assert (out / "train_2026-01-01_10-00-00_loss_score.png").is_file()
    assert (out / "train_2026-01-02_10-00-00_loss_score.png").is_file()
    labels = [run["label"] for run in json.loads((out / "results.json").read_text())["runs"]]
    assert labels == ["arunet3d (train_2026-01-01_10-00-00)", "arunet3d (train_2026-01-02_10-00-00)"]


def test_command_line(runs, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    script = REPO / "experiments/plot_runs.py"
    result = subprocess.run(
        [sys.executable, str(script), str(runs["arunet3d"]), str(runs["linknet3d"]), "--out", str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "| brats_arunet3d | arunet3d | regions | 6/10 |" in result.stdout
    assert_png(out / "comparison.png")


def test_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert "--out" in usage and "--source" not in usage and "--reference {paper}" in usage
    for argv, message in (
        ([], "required: RUN_DIR, --out"),
        (["run"], "required: --out"),
        (["run", "--out", "x", "--source", "csv"], "unrecognized arguments: --source csv"),
        (["run", "--out", "x", "--reference", "x"], "--reference: invalid choice: 'x'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err

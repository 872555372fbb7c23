"""experiments/pretraining/run.py: a variant's phantom model is trained once with its overrides and
the fine-tuning starts from it; the table and figure come from results written by hand."""

from __future__ import annotations

import importlib.util
import json
import subprocess

from test_time_to_dice import write_log
from train_helpers import ROOT

_spec = importlib.util.spec_from_file_location("pretraining_run", ROOT / "experiments" / "pretraining" / "run.py")
pretraining = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pretraining)


def test_a_variant_trains_its_phantom_model_once_then_fine_tunes_from_it(tmp_path, monkeypatch):
    commands, fine_tunes = [], []

    def fake_train(command, cwd, stdout, stderr):
        commands.append(command)
        task = next(a.split("=", 1)[1] for a in command if a.startswith("task_name="))
        run = tmp_path / "out" / task / "runs" / "2026-01-01_10-00-00"
        write_log(run / "csv" / "metrics.csv", [(2, 300.0, 0.5), (5, 720.0, 0.7)])
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "best.ckpt").write_bytes(b"weights")
        (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
        return subprocess.CompletedProcess(command, 0)

    def fake_train_one(args, model, fold, start):
        fine_tunes.append((args, model, fold, start))
        return {"name": pretraining.study.run_name(model, fold, start, args.tag), "curve": []}

    monkeypatch.setattr(pretraining.subprocess, "run", fake_train)
    monkeypatch.setattr(pretraining.study, "train_one", fake_train_one)
    argv = ["--variants", "epochs6", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]
    args = pretraining.parse_args(argv)
    args.out = args.out.resolve()
    for _ in range(2):
        result = pretraining.fine_tune(args, "epochs6")
    assert len(commands) == 1  # the second call reads the phantom model's record
    assert "experiment=phantom_model" in commands[0] and "phantom_epochs.arunet3d=6" in commands[0]
    assert "resume=true" in commands[0] and "task_name=phantom_epochs6" in commands[0]
    best = tmp_path / "out" / "phantom_epochs6" / "runs" / "2026-01-01_10-00-00" / "checkpoints" / "best.ckpt"
    runs, model, fold, start = fine_tunes[-1]
    assert (model, fold, start, runs.tag) == ("arunet3d", 0, "phantom", "epochs6")
    assert runs.overrides == ["inference.wt_min_fraction=0.1", f"init_from={best}"]
    assert result["phantom_model"]["fit_s"] == 720.0 and result["name"] == "arunet3d-phantom-epochs6-fold0"
    # the recipe's and the scratch runs are the study's own, untagged, with no phantom model made
    pretraining.fine_tune(args, "scratch")
    pretraining.fine_tune(args, "lr1e-2")
    assert [(f[3], f[0].tag) for f in fine_tunes[-2:]] == [("scratch", ""), ("phantom", "lr1e-2")]
    assert fine_tunes[-1][0].overrides == ["inference.wt_min_fraction=0.1", "model.optimizer.lr=1e-2"]
    assert len(commands) == 1


def test_report_table_and_figure(tmp_path):
    def result(variant, first, final, phantom):
        curve = [{"epoch": 4, "seconds": 100.0, "mean": first, "wt": 0.6, "tc": 0.5, "et": 0.4},
                 {"epoch": 39, "seconds": 800.0, "mean": final, "wt": 0.9, "tc": 0.8, "et": 0.7}]  # fmt: skip
        source = {"model": {r: {"dice": {"mean": 0.5}} for r in ("wt", "tc", "et")}}
        what = pretraining.VARIANTS[variant]["what"]
        return {"variant": variant, "what": what, "curve": curve, "source": source, "phantom_model": phantom}

    results = [result("scratch", 0.3, 0.69, None), result("epochs6", 0.55, 0.75, {"fit_s": 720.0})]
    args = pretraining.parse_args(["--out", str(tmp_path / "out"), "--results", str(tmp_path / "committed")])
    pretraining.report(results, args)
    text = (tmp_path / "committed" / "results.md").read_text()
    assert "| scratch | no pre-training | - | 0.300 (100) | 800 | never | 0.690 |" in text
    assert "| epochs6 | 96 phantoms, 6 epochs (2/5 of the steps) | 12 | 0.550 (100) | 100 | 800 | 0.750 |" in text
    assert json.loads((tmp_path / "committed" / "results.json").read_text())[1]["variant"] == "epochs6"
    assert (tmp_path / "committed" / "pretraining.png").stat().st_size > 0

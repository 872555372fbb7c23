"""experiments/evaluate_runs.py: runs scored on their own validation cases in the source geometry,
per fold and per ensemble, checked against labels read back and scored by hand."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from train_helpers import CONF, tiny_overrides

from tumorseg.labels import to_internal
from tumorseg.launch import register_resolvers
from tumorseg.predict import Predictor, PredictSettings, dataset_cases, predict
from tumorseg.runs import scoring as er
from tumorseg.training.module import load_model
from tumorseg.training.train import train

register_resolvers()


def tiny_run(tmp: Path, data_dir: Path, name: str, model: str, fold: int) -> Path:
    run_dir = tmp / f"{name}-fold{fold}"
    overrides = [
        *tiny_overrides(tmp, data_dir, model),
        f"task_name={name}",
        f"data.fold={fold}",
        "inference.et_min_voxels=3",
    ]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    cfg.paths.output_dir = str(run_dir)
    train(cfg)
    return run_dir


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, data_dir) -> dict[str, Path]:
    """Two multirun folders: 'a' (AR-UNet, folds 0 and 1) and 'b' (PSPNet, fold 0)."""
    tmp = tmp_path_factory.mktemp("runs")
    a, b = tmp / "sweep_a", tmp / "sweep_b"
    a.mkdir(), b.mkdir()
    for fold in (0, 1):
        tiny_run(tmp, data_dir, "a_arunet", "arunet3d", fold).rename(a / str(fold))
    tiny_run(tmp, data_dir, "b_pspnet", "pspnet3d", 0).rename(b / "0")
    return {"a": a, "b": b}


def case_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """BraTS Dice per region from internal label maps (0 bg, 1 NCR, 2 ED, 3 ET), empty-empty = 1."""
    regions = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}
    out = {}
    for region, classes in regions.items():
        p, r = np.isin(pred, classes), np.isin(ref, classes)
        total = p.sum() + r.sum()
        out[region] = 1.0 if total == 0 else 2.0 * (p & r).sum() / total
    return out


def read_internal(path: Path, convention: str = "brats2020") -> np.ndarray:
    return to_internal(np.asarray(nib.load(str(path)).dataobj), convention)


def test_scores_each_run_on_its_validation_cases(sweeps, tmp_path, capsys):
    out = tmp_path / "scored"
    status = er.main(
        [str(sweeps["a"]), str(sweeps["b"]), "--out", str(out), "--ensemble", "both=*_*", "--workers", "0"]
    )
    assert status == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    models = {m["name"]: m for m in results["models"]}
    assert sorted(models) == ["a_arunet", "b_pspnet", "both"]
    assert sorted(models["a_arunet"]["summary"]["folds"]) == ["fold 0", "fold 1"]
    assert sorted(models["both"]["summary"]["folds"]) == ["fold 0"]  # b has fold 0 only
    assert models["both"]["ensemble"] and not models["a_arunet"]["ensemble"]
    assert models["a_arunet"]["et_min_voxels"] == 3 and models["a_arunet"]["mirror"] is False

    dataset = Path(json.loads((sweeps["a"] / "0" / "run_info.json").read_text())["data"]["root"])
    references = {case.case_id: case.reference for case in dataset_cases(dataset)}
    for name, model in models.items():
        for fold, cases in model["cases"].items():
            run_dir = Path(model["runs"][fold][0])
            val = json.loads((run_dir / "split.json").read_text())["val"]
            folder = out / "predictions" / name / fold.replace(" ", "")
            written = sorted(p.name[: -len(".nii.gz")] for p in folder.glob("*.nii.gz"))
            assert written == sorted(val) == sorted(cases)  # only the fold's validation cases
            for case_id in val:
                dice = case_dice(read_internal(folder / f"{case_id}.nii.gz"), read_internal(references[case_id]))
                for region in er.REGIONS:
                    assert cases[case_id][region]["dice"] == pytest.approx(dice[region], abs=1e-9)

    # fold means, and mean and std over the folds, by hand
    a = models["a_arunet"]
    fold_means = {
        fold: np.mean([np.mean([c[r]["dice"] for r in er.REGIONS]) for c in cases.values()])
        for fold, cases in a["cases"].items()
    }
    for fold, value in fold_means.items():
        assert a["summary"]["folds"][fold]["dice_mean"] == pytest.approx(value)
    assert a["summary"]["mean"]["dice_mean"] == pytest.approx(np.mean(list(fold_means.values())))
    assert a["summary"]["std"]["dice_mean"] == pytest.approx(np.std(list(fold_means.values())))

    markdown = (out / "results.md").read_text()
    assert markdown in capsys.readouterr().out
    assert "| a_arunet | arunet3d | 2 | 4 | no | 3 |" in markdown
    assert "## Mean Dice per fold" in markdown
    assert results["by_network"] == {}  # one recipe per network here
    assert (out / "test_dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "curves" / "comparison.png").is_file() and (out / "curves" / "results.md").is_file()


def test_ensemble_is_predict_with_both_checkpoints(sweeps, tmp_path):
    out = tmp_path / "scored"
    er.evaluate_runs([sweeps["a"] / "0", sweeps["b"]], out, ensembles=[("both", "*")], workers=0, progress=False)
    runs = [sweeps["a"] / "0", sweeps["b"] / "0"]
    dataset = Path(json.loads((runs[0] / "run_info.json").read_text())["data"]["root"])
    val = json.loads((runs[0] / "split.json").read_text())["val"]
    items = [i for i in dataset_cases(dataset) if i.case_id in val]
    direct = tmp_path / "direct"
    predictor = Predictor([load_model(r / "checkpoints" / "last.ckpt") for r in runs])  # et_min_voxels=3 recorded
    assert predictor.et_min_voxels == 3
    predict(items, predictor, PredictSettings(output_dir=direct, png=False, workers=0, progress=False))
    for case_id in val:
        expected = np.asarray(nib.load(str(direct / f"{case_id}.nii.gz")).dataobj)
        got = np.asarray(nib.load(str(out / "predictions" / "both" / "fold0" / f"{case_id}.nii.gz")).dataobj)
        np.testing.assert_array_equal(got, expected)


def test_resumes_and_redoes_when_the_checkpoint_changes(sweeps, tmp_path):
    out = tmp_path / "scored"
    run = sweeps["b"] / "0"
    er.evaluate_runs([run], out, workers=0, progress=False)
    folder = out / "predictions" / "b_pspnet" / "fold0"
    first = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.nii.gz")}
    er.evaluate_runs([run], out, workers=0, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.nii.gz")} == first  # kept
    ckpt = run / "checkpoints" / "last.ckpt"
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 10**9))
    er.evaluate_runs([run], out, workers=0, progress=False, mirror=True)
    again = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.nii.gz")}
    assert again.keys() == first.keys() and all(again[k] != first[k] for k in first)
    assert json.loads((folder / "source.json").read_text())["mirror"] is True


def test_setup_errors_name_the_run(sweeps, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((sweeps["b"] / "0" / "config.yaml").read_text())
    for name in ("split.json", "run_info.json"):
        (broken / name).write_text((sweeps["b"] / "0" / name).read_text())
    assert er.main([str(broken), "--out", str(tmp_path / "o")]) == 1
    assert f"{broken}: no checkpoints/last.ckpt" in capsys.readouterr().err
    assert er.main([str(sweeps["b"]), "--out", str(tmp_path / "o"), "--ensemble", "one=b_*"]) == 1
    assert "needs two or more" in capsys.readouterr().err
    assert er.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 1
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        er.parse_args(["x", "--out", "o", "--ensemble", "no-pattern"])
    assert exit_info.value.code == 2 and "--ensemble: expected NAME=PATTERN" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_newest_run_of_a_task_and_fold_counts(sweeps, tmp_path, capsys):
    """A killed run (no checkpoint) and the run that resumed it: the resumed one is scored."""
    killed = tmp_path / "killed" / "0"
    killed.mkdir(parents=True)
    for name in ("config.yaml", "split.json", "run_info.json"):
        (killed / name).write_text((sweeps["b"] / "0" / name).read_text())
    runs = [er.read_run(p, "last", None, None) for p in (killed, sweeps["b"] / "0")]
    kept, notes = er.latest_runs(runs)
    assert [r.path for r in kept] == [sweeps["b"] / "0"] and str(killed) in notes[0]
    with pytest.raises(er.EvaluationSetupError, match="no checkpoints/last.ckpt"):
        er.latest_runs(runs[:1])


def test_networks_side_by_side_per_recipe():
    assert er.recipe_name("paper_arunet3d", "arunet3d") == "paper"
    assert er.recipe_name("brats_arunet3d", "arunet3d") == "brats"
    assert er.recipe_name("arunet3d", "arunet3d") == "arunet3d"
    summary = {"folds": {"fold 0": {"dice_mean": 0.5, "cases": 2}}, "cases": 2,
               "mean": {f"{m}_{r}": 0.5 for m in ("dice", "hd95") for r in er.REGIONS} | {"dice_mean": 0.5},
               "std": {}}  # fmt: skip
    summary["std"] = dict.fromkeys(summary["mean"])
    model = {"name": "brats_arunet3d", "network": "arunet3d", "mirror": True, "et_min_voxels": 500, "summary": summary}
    results = {"models": [model], "by_network": {"arunet3d": {"paper": 0.1, "brats": 0.5}}}
    markdown = er.results_markdown(results, "T")
    assert "| arunet3d | 0.500 | 0.100 | brats |" in markdown
    assert "| brats_arunet3d | arunet3d | 1 | 2 | yes | 500 | 0.500 |" in markdown


def test_a_moved_dataset_and_mixed_test_settings_are_named(sweeps, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(sweeps["b"] / "0", moved)
    info = json.loads((moved / "run_info.json").read_text())
    info["data"]["root"] = str(tmp_path / "gone")
    (moved / "run_info.json").write_text(json.dumps(info))
    assert er.main([str(moved), "--out", str(tmp_path / "o")]) == 1
    assert f"{moved}: its dataset {tmp_path / 'gone'} is not there any more" in capsys.readouterr().err

    mirrored = tmp_path / "mirrored"
    shutil.copytree(sweeps["b"] / "0", mirrored)
    ckpt = mirrored / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    saved["hyper_parameters"]["inference"]["mirror"] = True
    torch.save(saved, ckpt)
    args = [str(sweeps["a"] / "0"), str(mirrored), "--out", str(tmp_path / "o"), "--ensemble", "both=*"]
    assert er.main(args) == 1
    assert "differ in inference.mirror; set it for all with --mirror" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_settings_come_from_the_checkpoint_or_an_older_runs_config(sweeps, tmp_path):
    run = er.read_run(sweeps["b"] / "0", "last", None, None)
    er.test_settings(run)
    assert (run.mirror, run.et_min_voxels) == (False, 3)  # inference.et_min_voxels=3 when it trained
    forced = er.read_run(sweeps["b"] / "0", "last", True, 0)
    er.test_settings(forced)
    assert (forced.mirror, forced.et_min_voxels) == (True, 0)

    old = tmp_path / "old"  # trained when checkpoints held the validation window only, and config.yaml a test block
    shutil.copytree(sweeps["b"] / "0", old)
    ckpt = old / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    saved["hyper_parameters"]["inference"] = {"roi_size": 32, "overlap": 0.5, "sw_batch_size": 2, "mode": "gaussian",
                                              "mirror": False}  # fmt: skip
    torch.save(saved, ckpt)
    cfg = OmegaConf.load(old / "config.yaml")
    cfg.test = {"mirror": True, "et_min_voxels": 500}
    OmegaConf.save(cfg, old / "config.yaml")
    run = er.read_run(old, "last", None, None)
    er.test_settings(run)
    assert (run.mirror, run.et_min_voxels) == (True, 500)

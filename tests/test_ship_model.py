"""experiments/shipped_model/ship_model.py: a training checkpoint becomes the default shipped model, slimmer,
verified, and predicting exactly as the checkpoint did."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_predict import save_checkpoint, stand_in
from train_helpers import experiment_script

from tumorseg.checkpoints import registered_models, verify
from tumorseg.training.module import SegmentationModule


@pytest.fixture(scope="module")
def ship_model():
    yield from experiment_script("shipped_model/ship_model")


def training_run(tmp_path):
    """A run directory as train.py leaves it: config.yaml, run_info.json and a checkpoint with optimizer state."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = stand_in(run / "checkpoints" / "best.ckpt", (5.0, -5.0, -5.0))
    full = torch.load(ckpt, weights_only=True)
    full["optimizer_states"] = [{"state": {0: {"exp_avg": torch.zeros(100_000)}}}]
    torch.save(full, ckpt)
    data = {
        "_target_": "tumorseg.data.datamodule.SyntheticDataModule",
        "cases": 96,
        "shape": [96, 96, 64],
        "data_seed": 0,
    }
    (run / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    (run / "run_info.json").write_text(
        json.dumps({"command": ["train.py", "experiment=phantom_model", "paths.output_dir=x"]})
    )
    return ckpt


def test_ships_a_slim_verified_default(ship_model, tmp_path):
    ckpt = training_run(tmp_path)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "pretrained.json").write_text(json.dumps({"about": "test", "models": []}))
    old = {"name": "older", "file": "older.ckpt", "sha256": "0" * 64, "bytes": 1, "network": "arunet3d",
           "training_data": "x", "notice": "y"}  # fmt: skip
    registry = json.loads((weights / "pretrained.json").read_text())
    registry["models"].append(old)
    (weights / "pretrained.json").write_text(json.dumps(registry))

    target = ship_model.ship(ckpt, "phantom-test", None, weights)
    models = registered_models(weights / "pretrained.json")
    assert [m.name for m in models] == ["phantom-test", "older"]  # the new one is the default
    verify(models[0])  # size and SHA-256 match
    assert target.stat().st_size < ckpt.stat().st_size / 2  # no optimizer state
    assert "optimizer_states" not in torch.load(target, weights_only=True)
    assert "96 synthetic phantoms" in models[0].training_data and "experiment=phantom_model" in models[0].training_data
    assert "paths." not in models[0].training_data
    assert "not for clinical use" in models[0].notice

    shipped = SegmentationModule.load_from_checkpoint(target, map_location="cpu", weights_only=True).eval()
    original = SegmentationModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(shipped(x), original(x), rtol=0, atol=0)


def test_refuses_a_run_whose_data_it_cannot_describe(ship_model, tmp_path):
    ckpt = training_run(tmp_path)
    (ckpt.parent.parent / "config.yaml").write_text(yaml.safe_dump({"data": {"_target_": "BratsDataModule"}}))
    with pytest.raises(ValueError, match="neither the synthetic phantoms nor a dataset of real cases"):
        ship_model.ship(ckpt, "x", None, tmp_path)
    assert not (tmp_path / "x.ckpt").exists()


def test_a_model_of_real_cases_names_its_data_and_their_terms(ship_model, tmp_path):
    ckpt = training_run(tmp_path)
    run = ckpt.parent.parent
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"_target_": "BratsDataModule", "root": "/data/b18"}}))
    (run / "run_info.json").write_text(json.dumps({"command": [
        "train.py", "experiment=brats_cpu", "data.root=/data/b18", "data.fold=all", "paths.log_dir=/x"]}))  # fmt: skip
    cases = ["Brats18_CBICA_AAB_1", "Brats18_TCIA10_637_1", "Brats18_2013_23_1"]
    grades = dict(zip(cases, ["HGG", "LGG", "HGG"]))
    split = {"fold": "all", "preprocess": {"spacing": [2.5, 2.5, 2.5]}, "train": cases, "val": cases, "grades": grades}
    (run / "split.json").write_text(json.dumps(split))
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "pretrained.json").write_text(json.dumps({"models": []}))

    ship_model.ship(ckpt, "brats18-test", None, weights)
    (model,) = registered_models(weights / "pretrained.json")
    assert model.training_data == (
        "3 BraTS 2018 training cases (2 HGG, 1 LGG), expert labels on a 2.5x2.5x2.5 mm grid; "
        "recipe: python train.py experiment=brats_cpu data.fold=all"
    )
    assert "3 BraTS 2018 training cases" in model.notice
    assert "research use only" in model.notice and "not for clinical use" in model.notice

    split["train"] = [*cases, "BraTS2021_00000"]  # two editions: the name must be given
    (run / "split.json").write_text(json.dumps(split))
    with pytest.raises(ValueError, match="name the data with --data-name"):
        ship_model.ship(ckpt, "y", None, weights)
    ship_model.ship(ckpt, "y", None, weights, data_name="BraTS 2018 and 2021 training cases")
    assert (
        "4 BraTS 2018 and 2021 training cases (2 HGG, 1 LGG)"
        in registered_models(weights / "pretrained.json")[0].notice
    )


def test_refuses_a_checkpoint_outside_a_run_directory(ship_model, tmp_path):
    ckpt = training_run(tmp_path)
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(ckpt.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"config.yaml not found: give the checkpoint of a run directory"):
        ship_model.ship(loose, "x", None, tmp_path)
    assert not (tmp_path / "x.ckpt").exists()


@pytest.mark.parametrize("network", ["linknet3d", "pspnet3d"])
def test_ships_any_network_and_can_keep_the_default(ship_model, tmp_path, network):
    """A model made on first use (a recipe entry) shipped as a file with --keep-default: in its entry's
    place, predict.py's default unchanged."""
    ckpt = training_run(tmp_path)
    model = SegmentationModule({"name": network, "features": [4, 8, 16, 32], "full_resolution": True})
    save_checkpoint(model, ckpt)
    (ckpt.parent.parent / "run_info.json").write_text(
        json.dumps({"command": ["train.py", "experiment=phantom_model", f"model={network}", "hydra.run.dir=/cache/x"]})
    )
    weights = tmp_path / "weights"
    weights.mkdir()
    default = {"name": "default", "file": "default.ckpt", "sha256": "0" * 64, "bytes": 1, "network": "arunet3d",
               "training_data": "x", "notice": "y"}  # fmt: skip
    recipe = {"name": f"phantom-{network}", "recipe": ["experiment=phantom_model", f"model={network}"],
              "network": network, "training_data": "x", "notice": "y"}  # fmt: skip
    (weights / "pretrained.json").write_text(json.dumps({"models": [default, recipe]}))

    target = ship_model.ship(ckpt, f"phantom-{network}", None, weights, keep_default=True)
    models = registered_models(weights / "pretrained.json")
    assert [(m.name, m.shipped) for m in models] == [("default", True), (f"phantom-{network}", True)]
    assert verify(models[1]) == target and models[1].network == network
    assert models[1].training_data.endswith(f"recipe: python train.py experiment=phantom_model model={network}")
    shipped = SegmentationModule.load_from_checkpoint(target, map_location="cpu", weights_only=True).eval()
    x = torch.randn(1, 4, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(shipped(x), model.eval()(x), rtol=0, atol=0)

"""Configs: sizes read by one rule, and every model and experiment composing to its values."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from train_helpers import CONF

from tumorseg.data.datamodule import BratsDataModule
from tumorseg.inference import InferenceConfig
from tumorseg.launch import register_resolvers
from tumorseg.sizes import DEFAULT_PATCH_SIZE, auto_counts, auto_patch_edge, format_size, size3

register_resolvers()

# ------------------------------------------------------------------------------ sizes


@pytest.mark.parametrize(
    "value,expected",
    [(32, (32, 32, 32)), ([32, 32, 32], (32, 32, 32)), ((16, 32, 64), (16, 32, 64)),
     (np.int64(48), (48, 48, 48)), (OmegaConf.create([64, 64, 32]), (64, 64, 32))],
)  # fmt: skip
def test_sizes_are_one_edge_or_three(value, expected):
    size = size3(value, "data.patch_size")
    assert size == expected and all(type(e) is int for e in size)


@pytest.mark.parametrize("value", [0, -8, [32, 32], [32, 32, 32, 32], [32, 0, 32], "x", "32", "auto", True, 32.0, None])
def test_bad_sizes_are_refused_naming_the_option(value):
    with pytest.raises(ValueError, match=r"`data\.patch_size` must be a positive integer or three of them"):
        size3(value, "data.patch_size")


def test_every_reader_of_a_size_uses_the_one_rule(tmp_path):
    assert InferenceConfig().roi_size == (DEFAULT_PATCH_SIZE,) * 3
    assert InferenceConfig(roi_size=[16, 8, 4]).roi_size == (16, 8, 4)
    with pytest.raises(ValueError, match="`roi_size` must be"):
        InferenceConfig(roi_size="x")
    assert BratsDataModule(tmp_path).patch_size == (DEFAULT_PATCH_SIZE,) * 3
    assert BratsDataModule(tmp_path, patch_size=[64, 64, 32]).patch_size == (64, 64, 32)
    with pytest.raises(ValueError, match="`patch_size` must be"):
        BratsDataModule(tmp_path, patch_size=[32, 32])


def test_auto_sizes_and_how_sizes_are_written():
    assert auto_patch_edge(16) == 32 and auto_patch_edge(64) == 64
    assert auto_counts(32) == (4, 2) and auto_counts([64, 64, 32]) == (2, 1) and auto_counts(128) == (1, 1)
    assert format_size((32, 32, 32)) == "32" and format_size((32, 32, 64)) == "[32,32,64]"


# ------------------------------------------------------------------------------ composed configs


def composed(*overrides: str) -> dict:
    """The resolved config of `python train.py OVERRIDES` (without the Hydra node)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.root_dir=/runs", "paths.output_dir=/runs/out"])
    return OmegaConf.to_container(cfg, resolve=True)


def pick(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


QUICK_START = {
    "task_name": "train", "model.network.preset": "light", "model.network.norm": "instance",
    "model.labels": "regions", "model.aux_weight": 0.4,
    "model.loss": {"name": "dice_bce", "dice_weight": 1.0, "ce_weight": 1.0, "batch_dice": True},
    "model.optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay": 1e-5},
    "model.scheduler": {"name": "poly", "warmup_epochs": 1, "power": 0.9},
    "inference": {"roi_size": "auto", "overlap": 0.5, "sw_batch_size": 2, "mode": "gaussian", "mirror": False,
                  "val_mirror": False, "et_min_voxels": 32, "wt_min_fraction": 0.1},
    "data.patch_size": "auto", "data.batch_size": "auto", "trainer.max_epochs": "auto",
}  # fmt: skip
MODERN = {
    "model.network.preset": "paper", "model.labels": "regions", "model.loss.name": "dice_bce",
    "model.optimizer": {"name": "adamw", "lr": 3e-4, "weight_decay": 1e-5},
    "model.scheduler": {"name": "poly", "warmup_epochs": 5, "power": 0.9},
    "inference.roi_size": 128, "inference.sw_batch_size": 4, "data.patch_size": 128,
    "data.batch_size": 2, "data.samples_per_volume": 4, "trainer.precision": "bf16-mixed",
    "trainer.max_epochs": 300, "inference.mirror": True, "inference.et_min_voxels": 500,
}  # fmt: skip
PAPER = {
    "model.network.preset": "paper", "model.network.norm": "batch", "model.labels": "softmax4",
    "model.loss": {"name": "dice", "dice_weight": 1.0, "ce_weight": 1.0, "include_background": True,
                   "batch_dice": False},
    "model.optimizer.name": "rmsprop", "model.optimizer.weight_decay": 0.0,
    "model.scheduler": {"name": "none", "warmup_epochs": 0, "power": 0.9},
    "inference.overlap": 0.0, "inference.mode": "constant", "data.split": "paper",
    "data.preprocess.modalities": ["flair"], "data.preprocess.slices": [40, 104], "trainer.max_epochs": 200,
}  # fmt: skip
CASES = {
    (): {**QUICK_START, "model.network": {"name": "arunet3d", "preset": "light", "norm": "instance"}},
    ("model=linknet3d",): {**QUICK_START, "model.network": {"name": "linknet3d", "preset": "light",
                                                           "norm": "instance", "full_resolution": True}},
    ("model=pspnet3d",): {**QUICK_START, "model.network": {"name": "pspnet3d", "preset": "light", "norm": "instance",
                                                          "full_resolution": True, "aux_head": True}},
    ("experiment=quickstart",): {**QUICK_START, "task_name": "quickstart", "model.network.name": "arunet3d"},
    ("experiment=brats_arunet3d",): {**MODERN, "task_name": "brats_arunet3d", "model.network.name": "arunet3d"},
    ("experiment=brats_linknet3d",): {**MODERN, "task_name": "brats_linknet3d", "tags": ["brats", "linknet3d",
                                                                                          "regions"]},
    ("experiment=brats", "model=pspnet3d"): {**MODERN, "task_name": "brats_pspnet3d",
                                             "model.network.aux_head": True},
    ("experiment=paper_arunet3d",): {**PAPER, "task_name": "paper_arunet3d", "model.optimizer.lr": 1e-4,
                                     "data.patch_size": [64, 64, 64], "inference.roi_size": [64, 64, 64],
                                     "data.batch_size": 4},
    ("experiment=paper_linknet3d",): {**PAPER, "model.optimizer.lr": 1e-5, "model.network.full_resolution": False,
                                      "data.patch_size": [224, 224, 64], "inference.roi_size": [224, 224, 64]},
    ("experiment=paper_pspnet3d",): {**PAPER, "model.optimizer.lr": 1e-4, "data.batch_size": 2,
                                     "model.network.full_resolution": False, "model.network.aux_head": False,
                                     "inference.roi_size": [128, 128, 64]},
    ("experiment=paper_cpu_linknet3d",): {**PAPER, "task_name": "paper_cpu_linknet3d", "model.network.preset": "light",
                                          "model.optimizer.lr": 1e-3, "data.patch_size": [64, 64, 64],
                                          "inference.roi_size": [64, 64, 64], "trainer.max_epochs": 40,
                                          "data.shape": [96, 96, 155], "data.split": "kfold"},
    ("model=linknet3d", "model.optimizer.lr=1e-3", "model.loss.name=dice", "scheduler=cosine"): {
        "model.optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-5},
        "model.loss": {"name": "dice", "dice_weight": 1.0, "ce_weight": 1.0, "batch_dice": True},
        "model.scheduler": {"name": "cosine", "warmup_epochs": 1, "min_lr_factor": 0.0}},
    ("loss=dice_ce", "optimizer=sgd", "model.labels=softmax4"): {
        "model.loss.name": "dice_ce", "model.optimizer": {"name": "sgd", "lr": 1e-2, "momentum": 0.99,
                                                          "nesterov": True, "weight_decay": 3e-5}},
}  # fmt: skip


@pytest.mark.parametrize("overrides", list(CASES), ids=lambda o: " ".join(o) or "default")
def test_models_and_experiments_compose_to_their_values(overrides):
    cfg = composed(*overrides, "data.root=/data/BraTS2020")
    for key, value in CASES[overrides].items():
        assert pick(cfg, key) == value, key


@pytest.mark.parametrize("net", ["arunet3d", "linknet3d", "pspnet3d"])
def test_brats_net_is_the_shared_recipe_with_that_model(net):
    assert composed(f"experiment=brats_{net}", "data.root=/x") == composed(
        "experiment=brats", f"model={net}", "data.root=/x"
    )

"""Training: config composition, a run of each network, checkpoints, DDP, sweeps, resume, faults, logging."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import sigkill_at
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from train_helpers import CONF, ROOT, tiny_overrides

from tumorseg.launch import register_resolvers
from tumorseg.training.callbacks import AtomicCheckpointIO, git_state, package_versions
from tumorseg.training.module import NonFiniteLossError, SegmentationModule, build_optimizer, schedule_factor
from tumorseg.training.train import (
    build,
    checkpoint_to_resume,
    find_last_checkpoint,
    resolve_auto_sizes,
    resolve_precision,
    train,
    trainer_arguments,
)

register_resolvers()
GIT_CHECKOUT = (ROOT / ".git").exists() and shutil.which("git") is not None
GROUPS = [
    "model", "loss", "optimizer", "scheduler", "data", "trainer", "logger", "callbacks", "experiment", "hparams_search",
    "debug",
]  # fmt: skip


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def make_cfg(overrides: list[str], run_dir: Path, hydra_config: bool = False):
    if not any(o.startswith("paths.root_dir=") for o in overrides):
        overrides = [*overrides, f"paths.root_dir={run_dir.parent}"]  # no ${hydra:runtime.cwd} outside a run
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=hydra_config)
    cfg.paths.output_dir = str(run_dir)
    return cfg


def run_script(args: list[str], env_extra: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    # this checkout's package, whichever tumorseg is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def epoch_values(rows: list[dict], key: str) -> dict[int, float]:
    return {int(r["epoch"]): float(r[key]) for r in rows if r.get(key)}


# ------------------------------------------------------------------------------ configs


def test_every_group_option_and_experiment_composes(tmp_path):
    for group in GROUPS:
        assert options(group), group
        for option in options(group):
            overrides = [f"{group}={option}"]
            if option == "brats" or option.startswith("brats_"):
                overrides.append("data.root=/data/BraTS2021")  # the one mandatory value
            cfg = make_cfg(overrides, tmp_path, hydra_config=True)
            for node in ("model", "data", "trainer", "callbacks", "logger"):
                OmegaConf.to_container(cfg[node], resolve=True)
            if group == "hparams_search":
                assert cfg.hydra.sweeper.direction == "maximize"
    cfg = make_cfg(["experiment=brats_pspnet3d", "data.root=/x"], tmp_path)
    assert cfg.model.network.preset == "paper" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.data.patch_size == 128 and cfg.data.batch_size == 2 and cfg.model.labels == "regions"
    assert cfg.inference.roi_size == 128


@pytest.mark.parametrize("net", ["arunet3d", "linknet3d", "pspnet3d"])
def test_scaled_paper_experiment_keeps_the_published_protocol(tmp_path, net):
    """paper_cpu_<net> changes only the scale (data, image size, widths, epochs, learning rate), on the
    phantoms and, with data=brats, on real scans."""
    paper = make_cfg([f"experiment=paper_{net}", "data.root=/x"], tmp_path)
    scaled = make_cfg([f"experiment=paper_cpu_{net}"], tmp_path)
    real_data = ["data=brats", "data.root=/x", f"data.split_file={ROOT / 'experiments/brats_cpu/splits_brats18.json'}"]
    real = make_cfg([f"experiment=paper_cpu_{net}", *real_data, "data.fold=0"], tmp_path)
    same = [
        ("data", "preprocess", "modalities"), ("data", "preprocess", "slices"), ("data", "preprocess", "crop"),
        ("data", "batch_size"), ("data", "samples_per_volume"), ("data", "sampler"), ("data", "augmentation"),
        ("model", "labels"), ("model", "loss"), ("model", "optimizer", "name"), ("model", "optimizer", "weight_decay"),
        ("model", "scheduler"), ("model", "network", "name"), ("model", "network", "norm"),
        ("model", "network", "full_resolution"), ("inference", "overlap"), ("trainer", "precision"),
    ]  # fmt: skip
    for cfg in (scaled, real):
        for keys in same:
            assert OmegaConf.select(cfg, ".".join(keys)) == OmegaConf.select(paper, ".".join(keys)), keys
        assert list(cfg.data.preprocess.modalities) == ["flair"] and cfg.model.labels == "softmax4"
        assert cfg.model.optimizer.name == "rmsprop" and cfg.model.network.norm == "batch"
        assert cfg.model.loss.name == "dice" and cfg.trainer.accelerator == "cpu"
        edge = cfg.data.preprocess.in_plane[0]
        assert edge == (64 if net == "linknet3d" else 32)
        assert list(cfg.data.patch_size) == list(cfg.inference.roi_size) == [edge, edge, 64]
        assert cfg.model.optimizer.lr == 1e-3  # the published 1e-4 (LinkNet: 1e-5) scaled to ~1/50 of the steps
        assert cfg.model.network.preset == "light"
    # the phantoms, as before the data settings moved to conf/data/synthetic_paper.yaml
    assert scaled.data._target_.endswith("SyntheticDataModule") and scaled.trainer.max_epochs == 40
    assert scaled.data.cases == 24 and list(scaled.data.shape) == [96, 96, 155]
    assert (scaled.data.split, scaled.data.num_folds, scaled.data.fold) == ("kfold", 4, 0)
    # real scans: the data config of BratsDataModule, none of the phantoms' keys, the epochs set for real scans
    assert real.data._target_ == "tumorseg.data.datamodule.BratsDataModule"
    assert not {"cases", "shape", "data_seed"} & set(real.data)
    datamodule = instantiate(real.data)  # every key is one of its arguments
    assert datamodule.split_file == real_data[-1].split("=", 1)[1] and datamodule.num_workers == 1
    assert real.trainer.max_epochs == {"arunet3d": 60, "linknet3d": 150, "pspnet3d": 100}[net]
    # and nothing else differs from the phantoms' run but where the data comes from
    phantoms, scans = (OmegaConf.to_container(cfg) for cfg in (scaled, real))
    for cfg in (phantoms, scans):
        del cfg["trainer"]["max_epochs"]
        for key in ("_target_", "root", "cache_dir", "cases", "shape", "data_seed", "split_file", "layout",
                    "convention", "foreground_share"):  # fmt: skip
            cfg["data"].pop(key, None)
    assert phantoms == scans


def test_monitored_metric_is_named_once(tmp_path):
    cfg = make_cfg(["monitor.metric=val/dice_wt"], tmp_path)
    assert cfg.callbacks.best_checkpoint.monitor == "val/dice_wt"
    assert cfg.callbacks.early_stopping.monitor == "val/dice_wt"
    text = "\n".join(p.read_text() for p in CONF.rglob("*.yaml"))
    assert text.count("val/dice_mean") == 1  # the definition in train.yaml


def test_every_model_config_builds_its_network(tmp_path):
    # data.patch_size=auto: the network's smallest input, at least 32 (LinkNet's stride is 32)
    expected = {"arunet3d": 32, "linknet3d": 64, "pspnet3d": 32}
    assert sorted(expected) == options("model")
    for name in options("model"):
        cfg = make_cfg([f"model={name}"], tmp_path)
        assert cfg.data.patch_size == "auto"
        resolve_auto_sizes(cfg)
        assert cfg.data.patch_size == expected[name]
        model = instantiate(cfg.model, inference=OmegaConf.to_container(cfg.inference, resolve=True), _convert_="all")
        assert type(model.net).__name__.lower() == name
        assert model.hparams.inference["roi_size"] == expected[name]
    # a number given by the user is kept, and a bad one is refused by the size check
    cfg = make_cfg(["model=pspnet3d", "data.patch_size=48"], tmp_path)
    resolve_auto_sizes(cfg)
    assert cfg.data.patch_size == 48
    cfg = make_cfg(["model=linknet3d", "data.patch_size=32", f"paths.data_dir={tmp_path}"], tmp_path)
    with pytest.raises(ValueError, match="data.patch_size=32 is too small for linknet3d.*at least 64"):
        build(cfg)


@pytest.mark.parametrize("deterministic", [False, True, "warn"])
def test_deterministic_switch_turns_autotuning_off(tmp_path, deterministic, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = make_cfg([f"trainer.deterministic={str(deterministic).lower()}"], tmp_path)
    args = trainer_arguments(cfg.trainer)
    assert args["deterministic"] == deterministic
    assert args["benchmark"] is (not deterministic)  # the default config autotunes
    assert args["precision"] == "32-true"  # precision=auto without a GPU


# trainer.precision, trainer.accelerator, a CUDA device present, with bf16 -> the precision used
PRECISIONS = [
    ("auto", "cpu", False, False, "32-true"),
    ("auto", "cpu", True, True, "32-true"),  # a GPU the run does not use
    ("auto", "auto", False, False, "32-true"),
    ("auto", "auto", True, False, "32-true"),  # a GPU without bf16 (before Ampere)
    ("auto", "auto", True, True, "bf16-mixed"),
    ("auto", "gpu", True, True, "bf16-mixed"),
    ("auto", "cuda", True, True, "bf16-mixed"),
    ("auto", "gpu", True, False, "32-true"),
    ("16-mixed", "cpu", False, False, "16-mixed"),  # what the user set is kept
    ("bf16-mixed", "gpu", True, False, "bf16-mixed"),
    ("32-true", "auto", True, True, "32-true"),
]


@pytest.mark.parametrize(("precision", "accelerator", "cuda", "bf16", "expected"), PRECISIONS)
def test_precision_follows_the_accelerator(monkeypatch, precision, accelerator, cuda, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    trainer = OmegaConf.create({"precision": precision, "accelerator": accelerator})
    assert resolve_precision(trainer) == expected
    assert trainer_arguments(trainer)["precision"] == expected
    if precision == "auto":  # no precision given means auto
        assert resolve_precision(OmegaConf.create({"accelerator": accelerator})) == expected


def test_optimizer_and_schedule_from_config():
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(params, {"name": "rmsprop", "lr": 1e-4})
    assert isinstance(opt, torch.optim.RMSprop) and opt.param_groups[0]["lr"] == 1e-4
    with pytest.raises(ValueError, match="model.optimizer.name"):
        build_optimizer(params, {"name": "adagrad"})
    with pytest.raises(ValueError, match="rmsprop"):
        build_optimizer(params, {"name": "rmsprop", "betas": (0.9, 0.99)})
    poly = schedule_factor("poly", 100, warmup_steps=10, power=0.9)
    assert poly(0) == pytest.approx(0.1) and poly(9) == pytest.approx(1.0) and poly(10) == pytest.approx(1.0)
    assert poly(55) == pytest.approx(0.5**0.9) and poly(100) == pytest.approx(0.0)
    cosine = schedule_factor("cosine", 100, min_factor=0.1)
    assert cosine(0) == pytest.approx(1.0) and cosine(50) == pytest.approx(0.55) and cosine(100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="model.scheduler.name"):
        schedule_factor("step", 10)


# ------------------------------------------------------------------------------ runs


def check_run_dir(run_dir: Path) -> None:
    for name in ("config.yaml", "split.json", "run_info.json", "csv/metrics.csv", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "run_info.json").read_text())
    if GIT_CHECKOUT:
        assert re.fullmatch("[0-9a-f]{40}", info["git"]["commit"]) and isinstance(info["git"]["dirty"], bool)
    else:  # a source tarball: git is optional
        assert info["git"] == {"commit": None, "dirty": None}
    assert info["packages"]["torch"] == torch.__version__
    assert info["data"]["cases"] == 6 and len(info["data"]["sha256"]) == 64
    png = run_dir / "loss_score.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model", ["arunet3d", "linknet3d", "pspnet3d"])
def test_fast_run_of_each_network(tmp_path, data_dir, model):
    run_dir = tmp_path / "run"
    cfg = make_cfg(tiny_overrides(tmp_path, data_dir, model, epochs=2), run_dir)
    metrics, objects = train(cfg)
    check_run_dir(run_dir)
    for key in (
        "val/dice_wt",
        "val/dice_tc",
        "val/dice_et",
        "val/dice_mean",
        "val/loss",
        "train/loss",
        "train/dice_mean",
    ):
        assert key in metrics, key
    assert 0.0 <= metrics["val/dice_mean"] <= 1.0 and metrics["train/patches_per_s"] > 0
    rows = metrics_rows(run_dir)
    assert sorted(epoch_values(rows, "val/dice_mean")) == [0, 1] and sorted(epoch_values(rows, "train/loss")) == [0, 1]

    # the checkpoint holds plain data only, and rebuilds the same network
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["hyper_parameters"]["network"]["name"] == model
    restored = SegmentationModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    trained = objects["model"].eval()
    x = torch.randn(1, 4, 32, 32, 32) if model != "linknet3d" else torch.randn(1, 4, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), trained(x))


def test_compile_and_channels_last_keep_checkpoint_keys():
    plain = SegmentationModule({"name": "arunet3d", "features": [4, 8, 16]})
    fast = SegmentationModule({"name": "arunet3d", "features": [4, 8, 16]}, compile=True, channels_last=True)
    fast.configure_model()
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert fast.net._compiled_call_impl is not None  # compiled in place, not wrapped
    fast.load_state_dict(plain.state_dict())
    conv = next(m for m in fast.net.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)


RECORD_SCRIPT = """
import json, sys
import lightning.pytorch as pl
import tumorseg
from tumorseg.training.callbacks import RunRecord
trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=sys.argv[1])
print(json.dumps({"package": tumorseg.__file__, "record": json.loads(RunRecord().write(trainer).read_text())}))
"""


def test_run_record_outside_a_git_checkout(tmp_path, monkeypatch):
    """A source tarball (no .git) records null git fields instead of failing."""
    if GIT_CHECKOUT:
        assert re.fullmatch("[0-9a-f]{40}", git_state(ROOT)["commit"])
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
    tree = tmp_path / "tumorseg-src"
    shutil.copytree(ROOT / "src" / "tumorseg", tree / "src" / "tumorseg", ignore=shutil.ignore_patterns("__pycache__"))
    # GIT_CEILING_DIRECTORIES: git must not find a repository above tmp_path either
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "GIT_CEILING_DIRECTORIES": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", RECORD_SCRIPT, str(tmp_path / "run")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert Path(result["package"]).is_relative_to(tree)  # the copy ran, not the checkout
    assert result["record"]["git"] == {"commit": None, "dirty": None}
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["git"] == {"commit": None, "dirty": None}


def test_atomic_checkpoint_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


SLOW_CHECKPOINT_WRITE = """
import sys, time
import torch
from tumorseg.training.callbacks import AtomicCheckpointIO

real_save = torch.save


class Slow:  # a file that stalls once a megabyte of the checkpoint is on disk, to be killed there
    def __init__(self, file):
        self.file, self.written = file, 0

    def write(self, data):
        count = self.file.write(data)
        self.written += count
        if self.written > 2**20:
            self.file.flush()
            print("mid-write", flush=True)
            time.sleep(600)
        return count

    def __getattr__(self, name):
        return getattr(self.file, name)


torch.save = lambda obj, file: real_save(obj, Slow(file))
AtomicCheckpointIO().save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(2_000_000)}}, sys.argv[1])
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 0, "state_dict": {"w": torch.zeros(3)}}, last)
    sigkill_at(SLOW_CHECKPOINT_WRITE, "mid-write", str(last))
    # the killed write left its partial file, under a hidden temporary name nothing looks for
    (partial,) = [p for p in last.parent.iterdir() if p != last]
    assert partial.name.startswith(".last.ckpt.") and ".partial" in partial.name and partial.stat().st_size > 2**20
    assert find_last_checkpoint(tmp_path) == last
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and torch.equal(ckpt["state_dict"]["w"], torch.zeros(3))
    # the resumed run's next checkpoint replaces it whole
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, last)
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1


def test_nonfinite_losses_are_skipped_then_stop_training(tmp_path, data_dir, monkeypatch):
    calls = {"n": 0}
    real_forward = SegmentationModule.forward

    def forward(self, image):
        out = real_forward(self, image)
        if self.training:
            calls["n"] += 1
            if calls["n"] in (2, 3):  # two bad steps, then the run recovers
                out = out * float("nan")
        return out

    monkeypatch.setattr(SegmentationModule, "forward", forward)
    run_dir = tmp_path / "run"
    probe_override = "+callbacks.weights_probe._target_=train_helpers.WeightsProbe"
    cfg = make_cfg(
        [*tiny_overrides(tmp_path, data_dir, epochs=1, batches=4), "max_nonfinite=3", probe_override], run_dir
    )
    metrics, objects = train(cfg)
    assert metrics["train/nonfinite_steps"] == 2.0 and objects["model"].nonfinite["total"] == 2
    assert all(torch.isfinite(p).all() for p in objects["model"].parameters())
    probe = next(c for c in objects["trainer"].callbacks if type(c).__name__ == "WeightsProbe")
    assert probe.changed == [True, False, False, True]  # the two bad steps left the weights alone

    calls["n"] = -100  # from now on every step is bad
    monkeypatch.setattr(SegmentationModule, "forward", lambda self, image: real_forward(self, image) * float("nan"))
    run_dir = tmp_path / "run2"
    cfg = make_cfg([*tiny_overrides(tmp_path, data_dir, epochs=1, batches=4), "max_nonfinite=3"], run_dir)
    with pytest.raises(NonFiniteLossError, match="not finite for 3 consecutive steps") as err:
        train(cfg)
    saved = run_dir / "checkpoints" / "nonfinite-stop.ckpt"
    assert str(saved) in str(err.value) and "model.optimizer.lr" in str(err.value)
    ckpt = torch.load(saved, map_location="cpu", weights_only=True)
    assert ckpt["nonfinite"]["streak"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_offline_wandb_records_the_dice_history(tmp_path, data_dir, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no API key, so offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    run_dir = tmp_path / "run"
    cfg = make_cfg([*tiny_overrides(tmp_path, data_dir, epochs=2), "logger=wandb"], run_dir)
    metrics, _ = train(cfg)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert len(list(runs[0].glob("run-*.wandb"))) == 1  # the run's log, for `wandb sync`
    # the history is read from the CSV log written beside W&B's
    assert sorted(epoch_values(metrics_rows(run_dir), "val/dice_mean")) == [0, 1]
    assert (run_dir / "loss_score.png").is_file()
    panels = list(runs[0].glob("files/media/images/val/panel_*.png"))
    assert len(panels) == 2  # one per validation
    assert (run_dir / "csv" / "metrics.csv").is_file()  # CSV always


# ------------------------------------------------------------------------------ processes


def test_ddp_cpu_two_processes_train_and_validate_like_one(tmp_path, data_dir):
    run_dir = tmp_path / "outputs" / "ddp"
    probe = tmp_path / "probe"
    args = [
        *tiny_overrides(tmp_path, data_dir, epochs=1, batches=2),
        "trainer=ddp_cpu",
        "trainer.limit_train_batches=2",
        "+callbacks.rank_probe._target_=train_helpers.RankProbe",
        f"+callbacks.rank_probe.out_dir={probe}",
        f"hydra.run.dir={run_dir}",
    ]
    done = run_script(args)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and all(r["batches"] == 2 for r in ranks)
    assert ranks[0]["pid"] != ranks[1]["pid"]
    val_cases = ranks[0]["val_cases"] + ranks[1]["val_cases"]
    assert len(val_cases) == len(set(val_cases)) == 2  # every validation case once, across ranks
    # one run directory, written once
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["ddp"]
    check_run_dir(run_dir)

    # validation Dice under DDP equals one process evaluating the same checkpoint
    ddp_dice = epoch_values(metrics_rows(run_dir), "val/dice_mean")[0]
    import lightning.pytorch as pl

    cfg = make_cfg(tiny_overrides(tmp_path, data_dir), tmp_path / "single")
    model = SegmentationModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path / "single")  # fmt: skip
    (result,) = trainer.validate(model, datamodule=instantiate(cfg.data, _convert_="all"))
    assert result["val/dice_mean"] == pytest.approx(ddp_dice, abs=1e-6)


def test_optuna_sweep_of_two_trials(tmp_path, data_dir, hydra_script):
    sweep_dir = tmp_path / "sweep"
    args = [
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep_dir}",
        *tiny_overrides(tmp_path, data_dir, epochs=1, batches=2),
    ]
    status, _, err = hydra_script("train.py", *args)
    assert status == 0, err[-3000:]
    result = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert 0.0 <= result.best_value <= 1.0
    assert set(result.best_params) >= {"model.optimizer.lr", "data.foreground_share"}
    trials = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(trials) == 2
    lrs = {OmegaConf.load(t / "config.yaml").model.optimizer.lr for t in trials}
    assert len(lrs) == 2 and all(1e-4 <= lr <= 3e-3 for lr in lrs)


def test_sigkill_then_resume_reaches_the_planned_epochs(tmp_path, data_dir, hydra_script):
    log_dir = tmp_path / "outputs"
    args = [
        *tiny_overrides(tmp_path, data_dir, epochs=3, batches=2),
        f"paths.log_dir={log_dir}",
        "task_name=killed",
        "+callbacks.slow._target_=train_helpers.SlowEpochs",
        "+callbacks.slow.seconds=3",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    last = None
    while time.monotonic() < deadline and proc.poll() is None:
        last = find_last_checkpoint(log_dir / "killed")
        if last is not None:
            break
        time.sleep(0.2)
    assert last is not None, proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGKILL)  # during the sleep after epoch 0
    proc.wait()
    first_run = last.parent.parent
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0

    status, _, err = hydra_script("train.py", *args[:-2], "resume=true")  # the same command, resumed
    assert status == 0, err[-3000:]
    runs = sorted((log_dir / "killed" / "runs").iterdir())
    assert len(runs) == 2 and first_run in runs
    second_run = next(r for r in runs if r != first_run)
    ckpt = torch.load(second_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 6  # 3 epochs of 2 batches, none repeated
    assert sorted(epoch_values(metrics_rows(second_run), "val/dice_mean")) == [1, 2]
    info = json.loads((second_run / "run_info.json").read_text())
    assert info["resumed_from"] == str(last)
    assert info["previous_metrics"] == [str(first_run / "csv" / "metrics.csv")]
    assert (second_run / "loss_score.png").stat().st_size > 10_000


def test_the_papers_setup_flair_only_softmax4_whole_resized_volumes(tmp_path, data_dir):
    from tumorseg.predict import run as predict_run

    run_dir = tmp_path / "run"
    overrides = [
        *tiny_overrides(tmp_path, data_dir, epochs=1, batches=2),
        "data.preprocess.modalities=[flair]",
        "data.preprocess.slices=[4,28]",
        "data.preprocess.in_plane=[32,32]",
        "data.preprocess.crop=false",
        "data.patch_size=[32,32,24]",
        "data.sampler=uniform",
        "model.labels=softmax4",
        "model.loss.name=dice",
        "model.optimizer.name=rmsprop",
        "model.optimizer.lr=1e-4",
        "model.scheduler.name=none",
        "model.scheduler.warmup_epochs=0",
    ]
    metrics, objects = train(make_cfg(overrides, run_dir))
    model = objects["model"]
    assert model.hparams.modalities == ["flair"] and model.hparams.labels == "softmax4"
    first_conv = next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.in_channels == 1
    assert isinstance(model.optimizers().optimizer, torch.optim.RMSprop)
    for key in ("val/dice_ncr", "val/dice_ed", "val/dice_et", "val/dice_classes_mean"):
        assert 0.0 <= metrics[key] <= 1.0, key
    image = objects["datamodule"].train_entries[0].load()[0]
    assert image.shape == (1, 32, 32, 24)  # FLAIR, resized in-plane, slices 4-27

    # the checkpoint segments a dataset in its own geometry, outside the slice range as background
    out = tmp_path / "seg"
    source = objects["datamodule"].root
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "predict",
            overrides=[f"paths.root_dir={tmp_path}", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                       f"input={source}", f"output_dir={out}", "progress=false", "workers=0", "evaluate=false"],
        )  # fmt: skip
    assert predict_run(cfg) == 0
    import nibabel as nib

    case = sorted(p for p in source.iterdir() if p.is_dir())[0]
    seg = nib.load(out / f"{case.name}.nii.gz")
    assert seg.shape == (48, 40, 32)
    values = np.asarray(seg.dataobj)
    assert not values[:, :, :4].any() and not values[:, :, 28:].any()


def test_the_papers_training_score_is_one_minus_the_last_batch_loss(tmp_path, data_dir):
    """train/dice_loss_last_batch: the Dice loss of each epoch's last batch, once per epoch (the paper's
    training Dice score is 1 minus it); train/dice_loss stays the epoch's mean."""
    run_dir = tmp_path / "run"
    overrides = [
        *tiny_overrides(tmp_path, data_dir, epochs=2, batches=3),
        "model.labels=softmax4",
        "model.loss.name=dice",  # the paper's loss: the returned loss is the Dice loss
        "+callbacks.batch_losses._target_=train_helpers.BatchLosses",
    ]
    _, objects = train(make_cfg(overrides, run_dir))
    losses = next(c for c in objects["trainer"].callbacks if type(c).__name__ == "BatchLosses").losses
    assert sorted(losses) == [0, 1] and all(len(epoch) == 3 for epoch in losses.values())
    rows = metrics_rows(run_dir)
    last = epoch_values(rows, "train/dice_loss_last_batch")
    assert [r["epoch"] for r in rows if r.get("train/dice_loss_last_batch")] == ["0", "1"]  # once per epoch
    for epoch, batch_losses in losses.items():
        assert 1 - last[epoch] == pytest.approx(1 - batch_losses[-1], abs=1e-6)
        assert epoch_values(rows, "train/dice_loss")[epoch] == pytest.approx(np.mean(batch_losses), abs=1e-6)
        assert last[epoch] != pytest.approx(np.mean(batch_losses), abs=1e-6)


def test_resume_picks_the_newest_run_of_the_same_task_and_fold(tmp_path):
    def fake_run(name: str, task: str, fold: int, age: float) -> Path:
        run = tmp_path / "sweep" / name
        (run / "checkpoints").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create({"task_name": task, "data": {"split": "kfold", "fold": fold, "num_folds": 5}}),
                       run / "config.yaml")  # fmt: skip
        ckpt = run / "checkpoints" / "last.ckpt"
        ckpt.write_bytes(b"x")
        os.utime(ckpt, (time.time() - age, time.time() - age))
        return ckpt

    old_fold1 = fake_run("0", "brats_arunet3d", 1, age=300)
    new_fold1 = fake_run("1", "brats_arunet3d", 1, age=200)
    fake_run("2", "brats_arunet3d", 0, age=10)  # newer, but another fold
    fake_run("3", "brats_pspnet3d", 1, age=5)  # newer, but another task
    cfg = OmegaConf.create({"task_name": "brats_arunet3d", "data": {"split": "kfold", "fold": 1, "num_folds": 5}})
    assert find_last_checkpoint(tmp_path / "sweep", cfg) == new_fold1
    assert find_last_checkpoint(tmp_path / "sweep") != new_fold1  # without cfg: any run
    cfg.data.fold = 4
    assert find_last_checkpoint(tmp_path / "sweep", cfg) is None
    assert old_fold1.exists()

    run_cfg = OmegaConf.create({"ckpt_path": None, "resume": str(tmp_path / "nowhere"), "task_name": "t",
                                "paths": {"log_dir": str(tmp_path)}, "data": {}, "model": {}})  # fmt: skip
    with pytest.raises(FileNotFoundError, match="resume=.*nowhere: no such folder"):
        checkpoint_to_resume(run_cfg)


def test_run_info_records_torch_as_torch_reports_it(monkeypatch):
    # a CUDA build from PyPI: its metadata says 2.14.1, torch.__version__ says 2.14.1+cu130
    version = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "2.14.1" if name == "torch" else version(name))
    monkeypatch.setattr(torch, "__version__", "2.14.1+cu130")
    versions = package_versions()
    assert versions["torch"] == torch.__version__ == "2.14.1+cu130"
    assert versions["numpy"] == np.__version__ and versions["nibabel"] == version("nibabel")

"""Tiny training configurations and probe callbacks for the training tests (also imported by the
subprocesses those tests start, with this folder on PYTHONPATH)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def experiment_script(path: str) -> Iterator[ModuleType]:
    """``experiments/<path>.py`` imported as a module, for a fixture to yield; removed again after."""
    name = Path(path).name
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{path}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def tiny_overrides(root: Path, data_dir: Path, model: str = "arunet3d", epochs: int = 1, batches: int = 2) -> list[str]:
    """Hydra overrides for a run of a few seconds on a CPU: 6 phantoms of 48x40x32, small patches."""
    patch = 64 if model == "linknet3d" else 32  # LinkNet's stride is 32
    return [
        f"model={model}",
        f"paths.root_dir={root}",
        f"paths.data_dir={data_dir}",
        "data.cases=6",
        "data.shape=[48,40,32]",
        "data.num_folds=3",
        f"data.patch_size={patch}",
        "data.batch_size=2",
        "data.samples_per_volume=2",
        "data.queue_length=4",
        "data.num_workers=0",
        "data.val_workers=0",
        "data.preprocess_workers=1",
        "trainer.accelerator=cpu",
        f"trainer.max_epochs={epochs}",
        f"trainer.limit_train_batches={batches}",
        "trainer.log_every_n_steps=1",
        "trainer.check_val_every_n_epoch=1",
        "trainer.enable_progress_bar=false",
        "~callbacks.progress_bar",
        "callbacks.throughput.warmup_steps=1",
    ]


class RankProbe(Callback):
    """Records, per rank, the training batches and validation cases it saw."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.batches = 0
        self.val_cases: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val_cases.extend(batch["case_id"])

    def on_fit_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world": trainer.world_size, "batches": self.batches,
                  "val_cases": self.val_cases, "pid": os.getpid()}  # fmt: skip
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class SlowEpochs(Callback):
    """Sleeps after each training epoch so a test can kill the run between checkpoints."""

    def __init__(self, seconds: float = 2.0):
        self.seconds = seconds

    def on_train_epoch_end(self, trainer, pl_module):
        time.sleep(self.seconds)


class WeightsProbe(Callback):
    """Records, for each training batch, whether it changed the network's weights."""

    def __init__(self):
        self.changed: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        after = list(pl_module.parameters())
        self.changed.append(any(not torch.equal(a, b) for a, b in zip(self.before, after)))


class StartProbe(Callback):
    """Records, when training starts, the epoch, the step, the optimizer's state and the network's weights."""

    def on_train_start(self, trainer, pl_module):
        self.epoch, self.step = trainer.current_epoch, trainer.global_step
        self.optimizer_state = {k: dict(v) for k, v in trainer.optimizers[0].state.items()}
        self.weights = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}


class BatchLosses(Callback):
    """Records the loss each training batch returned, per epoch."""

    def __init__(self):
        self.losses: dict[int, list[float]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.setdefault(trainer.current_epoch, []).append(float(outputs["loss"]))

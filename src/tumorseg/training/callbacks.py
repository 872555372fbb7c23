"""Lightning callbacks and plugins of a training run: atomic checkpoints, the run record, the
loss/score figure, the validation cases' scores and the W&B image panel."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from tumorseg.io import atomic_write, write_atomic

log = logging.getLogger(__name__)

PACKAGES = (
    "tumorseg",
    "torch",
    "lightning",
    "torchmetrics",
    "monai",
    "torchio",
    "hydra-core",
    "numpy",
    "nibabel",
    "wandb",
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it into place, so a run killed at any
    moment leaves the previous checkpoint whole instead of a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no `storage_options`, got {storage_options!r}.")
        with atomic_write(path, "wb") as file:
            torch.save(checkpoint, file)


def git_state(path: str | Path | None = None) -> dict:
    """Commit and dirty flag of the git work tree holding ``path`` (the package by default); both
    None outside a git checkout (a source tarball) or without git."""
    where = Path(path) if path else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def package_versions() -> dict[str, str | None]:
    """The version of each of ``PACKAGES`` (None where it is not installed), as the package reports
    it: torch's is ``torch.__version__``, whose build tag (``2.14.1+cu130``) its metadata lacks."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["torch"] = str(torch.__version__)
    return versions


def data_fingerprint(datamodule) -> dict | None:
    """Hash of the cached cases' source fingerprints and preprocessing key, or None."""
    cache = getattr(datamodule, "cache", None)
    if cache is None:
        return None
    items = sorted((e.case_id, e.meta.get("fingerprint", "")) for e in cache.entries)
    digest = hashlib.sha256(json.dumps(items).encode()).hexdigest()
    return {
        "root": str(getattr(datamodule, "root", "")),
        "cache": str(cache.root),
        "cases": len(items),
        "sha256": digest,
    }


def csv_metrics_file(trainer: pl.Trainer) -> Path | None:
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            return Path(logger.log_dir) / "metrics.csv"  # known on every rank, unlike `experiment`
    return None


class RunRecord(Callback):
    """Writes ``run_info.json`` in the run directory: git commit, package versions, hardware, data
    fingerprint, the checkpoint resumed from, where the initial weights came from (``init_from``: the
    spec, file, SHA-256 and registered name; a resumed run keeps its first run's), and the metrics
    files of earlier runs of this training (so a resumed run still draws its whole history)."""

    def __init__(self):
        self.history: list[str] = []  # metrics.csv files of the runs this one continues
        self.current: Path | None = None  # this run's
        self.resumed_from: str | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.current = csv_metrics_file(trainer)

    def metrics_files(self) -> list[Path]:
        files = [Path(p) for p in self.history]
        return files + [self.current] if self.current is not None and self.current not in files else files

    def state_dict(self) -> dict:
        # the checkpoint carries this run's metrics file too, so a resumed run finds it
        return {"history": [str(p) for p in self.metrics_files()]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.resumed_from = str(trainer.ckpt_path) if trainer.ckpt_path else None
        if trainer.is_global_zero:
            self.write(trainer)

    @rank_zero_only
    def write(self, trainer: pl.Trainer) -> Path:
        record = {
            "command": sys.argv,
            "git": git_state(),
            "packages": package_versions(),
            "python": platform.python_version(),
            "host": socket.gethostname(),
            "accelerator": type(trainer.accelerator).__name__,
            "devices": trainer.num_devices,
            "num_nodes": trainer.num_nodes,
            "world_size": trainer.world_size,
            "precision": str(trainer.precision),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "data": data_fingerprint(trainer.datamodule),
            "resumed_from": self.resumed_from,
            "init_from": getattr(trainer.lightning_module, "init_source", None),
            "previous_metrics": list(self.history),
        }
        return write_atomic(Path(trainer.default_root_dir) / "run_info.json", json.dumps(record, indent=1))


class FlushLoggers(Callback):
    """Flushes the loggers at each epoch start so a killed run loses at most the current epoch."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.save()


class LossScorePlot(Callback):
    """Draws ``loss_score.png`` in the run directory at the end of fit (and after a crash): Dice loss
    and Dice score per epoch, train and validation, as the paper's figures do, from the CSV log
    (every logger config writes it, W&B's too). A resumed run draws the epochs of the runs it
    continues too."""

    def __init__(self, filename: str = "loss_score.png"):
        self.filename = filename

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule | None = None) -> Path | None:
        from tumorseg.plots import epoch_history, plot_loss_score
        from tumorseg.plots.curves import region_keys

        for logger in trainer.loggers:
            logger.save()
        record = next((c for c in trainer.callbacks if isinstance(c, RunRecord)), None)
        files = record.metrics_files() if record else [p for p in [csv_metrics_file(trainer)] if p]
        if not files:
            log.warning("No CSV logger: %s is not drawn.", self.filename)
            return None
        try:
            path = plot_loss_score(
                epoch_history(files),
                Path(trainer.default_root_dir) / self.filename,
                region_keys=region_keys(getattr(pl_module, "label_set", "brats2023")),
            )
        except (FileNotFoundError, ValueError) as err:
            log.warning("%s not drawn: %s", self.filename, err)
            return None
        log.info("Loss and score curves: %s", path)
        return path

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.draw(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.is_global_zero:
            self.draw(trainer, pl_module)


class WandbSegmentationPanel(Callback):
    """Logs, after each validation, one validation case to W&B: a slice per modality, the ground
    truth and the prediction (``val/panel``). Does nothing without a ``WandbLogger``."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        pl_module.keep_val_sample = bool(self.loggers) and trainer.is_global_zero

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sample = getattr(pl_module, "val_sample", None)
        if not self.loggers or not trainer.is_global_zero or trainer.sanity_checking or sample is None:
            return
        from tumorseg.plots import figure_to_array, segmentation_panel

        fig = segmentation_panel(
            sample["image"].astype("float32"),
            sample["pred"],
            sample["label"],
            modalities=tuple(pl_module.hparams.modalities),
            title=f"{sample['case_id']}, epoch {trainer.current_epoch}",
            colours=pl_module.label_set.colours,
        )
        for logger in self.loggers:
            logger.log_image(key="val/panel", images=[figure_to_array(fig)], caption=[sample["case_id"]])
        pl_module.val_sample = None


class ValidationCases(Callback):
    """Appends, after each validation, the Dice of every validation case to ``val_cases.csv`` in the
    run directory: epoch, case, the rank that validated it and its Dice per region (WT, TC, ET) (the scores
    whose mean is ``val/dice_*``). Which cases pull the mean down, and, under DDP, that every case
    was validated once: the ranks' rows are gathered to rank zero, which alone writes."""

    def __init__(self, filename: str = "val_cases.csv"):
        self.filename = filename
        self.rows: list[dict] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or not isinstance(outputs, dict) or "dice" not in outputs:
            return
        for case_id, dice in zip(batch["case_id"], outputs["dice"].tolist()):
            row = {"epoch": trainer.current_epoch, "case_id": case_id, "rank": trainer.global_rank}
            self.rows.append({**row, **{f"dice_{r}": value for r, value in zip(outputs["regions"], dice)}})

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        rows = self.rows
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [None] * trainer.world_size if trainer.is_global_zero else None
            torch.distributed.gather_object(rows, parts, dst=0)  # every rank calls it, rank zero receives
            rows = [row for part in parts for row in part] if trainer.is_global_zero else []
        if trainer.is_global_zero and rows:
            self.write(Path(trainer.default_root_dir) / self.filename, sorted(rows, key=lambda r: r["case_id"]))
        self.rows = []

    @staticmethod
    def write(path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)


class TrainingThroughput(Callback):
    """Logs ``train/patches_per_s``: training patches per second over each epoch, end to end
    (loading, augmentation, forward, backward, optimizer), all ranks together, leaving out the
    first ``warmup_steps`` batches (compilation, cuDNN autotuning, queue filling) and validation;
    and ``time/elapsed_s`` at each validation: wall seconds since this process started fitting,
    validation included, so scores can be drawn against time (``experiments/quickstart/time_to_dice.py``)."""

    def __init__(self, warmup_steps: int = 5):
        self.warmup_steps = warmup_steps
        self.fit_start = time.perf_counter()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            pl_module.log("time/elapsed_s", time.perf_counter() - self.fit_start, rank_zero_only=True)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.batches, self.patches, self.start = 0, 0, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self.batches == self.warmup_steps:
            if torch.cuda.is_available() and pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            self.start = time.perf_counter()
        elif self.start is not None:
            self.patches += batch["image"].shape[0]
            # the loss check syncs with the device every step, so this is when the step ended
            self.end = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # validation, which ran since the last batch, is left out
        if self.start is None or not self.patches:
            return
        rate = self.patches * trainer.world_size / (self.end - self.start)
        pl_module.log("train/patches_per_s", rate, rank_zero_only=True)

"""Training from a composed Hydra config: ``train(cfg)`` is a plain function that tests call;
the repository's ``train.py`` runs ``run`` as a Hydra task (``tumorseg.cli.hydra_command``)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from tumorseg.cli import EXIT_INCOMPLETE, in_multirun
from tumorseg.labels import MODALITIES, label_set
from tumorseg.sizes import AUTO, auto_counts, auto_patch_edge, format_size, size3
from tumorseg.training.callbacks import AtomicCheckpointIO
from tumorseg.training.module import NonFiniteLossError, SegmentationModule

log = logging.getLogger(__name__)


def resolve_precision(trainer_cfg: DictConfig) -> str:
    """``auto``: bf16-mixed on a CUDA device with bf16 support, 32-true otherwise."""
    precision = str(trainer_cfg.get("precision", "auto"))
    if precision != "auto":
        return precision
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def trainer_arguments(trainer_cfg: DictConfig) -> dict:
    """The ``Trainer`` arguments of ``cfg.trainer``: precision resolved, and with ``deterministic``
    no cuDNN autotuning, which picks kernels by timing them (Lightning only warns about the pair)."""
    args = OmegaConf.to_container(trainer_cfg, resolve=True)
    args["precision"] = resolve_precision(trainer_cfg)
    if args.get("deterministic"):
        args["benchmark"] = False
    return args


def find_last_checkpoint(runs_root: Path, cfg: DictConfig | None = None) -> Path | None:
    """The newest ``*/checkpoints/last.ckpt`` under ``runs_root`` (a requeued job reusing its run
    directory finds its own); with ``cfg``, only of runs with its ``task_name`` and data split
    (split, fold, number of folds), so a cross-validation fold never continues another fold."""
    found = [p for p in runs_root.glob("**/checkpoints/last.ckpt") if cfg is None or _same_task(p.parent.parent, cfg)]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def _same_task(run_dir: Path, cfg: DictConfig) -> bool:
    try:
        other = OmegaConf.load(run_dir / "config.yaml")
    except (OSError, ValueError):
        return False
    keys = ("task_name", "data.split", "data.fold", "data.num_folds", "data.split_file")
    return all(OmegaConf.select(other, k, default=None) == OmegaConf.select(cfg, k, default=None) for k in keys)


def checkpoint_to_resume(cfg: DictConfig) -> Path | None:
    """``ckpt_path`` if given (it must exist), else with ``resume`` the newest last checkpoint of an
    earlier run of this ``task_name`` and data split (``resume=true``: under ``paths.log_dir/<task_name>``;
    ``resume=DIR``: under DIR, e.g. an earlier multirun), else None."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={path}: no such checkpoint file.")
        return path
    resume = cfg.get("resume")
    if resume is None or resume is False:
        return None
    if resume is True:
        runs_root = Path(cfg.paths.log_dir) / cfg.task_name
    else:
        runs_root = Path(str(resume)).expanduser()
        if not runs_root.is_dir():
            raise FileNotFoundError(f"resume={resume}: no such folder; give true or a folder of earlier runs.")
    path = find_last_checkpoint(runs_root, cfg)
    if path is None:
        log.warning(
            "resume: no checkpoints/last.ckpt of task %s (data split %s, fold %s) under %s; starting a new training.",
            cfg.task_name, cfg.data.get("split"), cfg.data.get("fold"), runs_root,
        )  # fmt: skip
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]["network"]["name"]
    if saved != cfg.model.network.name:
        raise ValueError(
            f"resume found {path}, a {saved} checkpoint, but model={cfg.model.network.name}; "
            f"pass model={saved}, a different task_name, or ckpt_path=<checkpoint> explicitly."
        )
    log.info("Resuming from %s", path)
    return path


def instantiate_all(group: DictConfig | None, kind: str) -> list:
    """Instantiate every ``_target_`` entry of a config group (callbacks, loggers)."""
    objects = []
    for name, entry in (group or {}).items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            try:
                objects.append(hydra.utils.instantiate(entry, _convert_="all"))
            except Exception as err:
                raise ValueError(f"{kind}.{name}: cannot create {entry._target_}: {err}") from err
    return objects


def check_sizes(model: SegmentationModule, datamodule: pl.LightningDataModule) -> None:
    """Patches and inference windows must be large enough for the network's stride."""
    least = model.net.min_input_size
    name = model.hparams.network["name"]
    windows = (
        ("data.patch_size", getattr(datamodule, "patch_size", None)),
        ("inference.roi_size", model.inference_config.roi_size),
    )
    for option, value in windows:
        size = size3(value, option) if value is not None else None
        if size is not None and min(size) < least:
            raise ValueError(
                f"{option}={format_size(size)} is too small for {name}, which needs at least {least} voxels per "
                f"axis; pass {option}={least} (or larger) along every axis."
            )


# trainer.max_epochs=auto: the quick start's epochs for each network, about 4-6 minutes of fitting
# on a 2-core CPU (AR-UNet's step costs twice the others'; PSPNet's validation Dice still rose
# by 0.02 an epoch pair at 10); even, so that validating every 2nd epoch scores the last one.
AUTO_EPOCHS = {"arunet3d": 6, "linknet3d": 12, "pspnet3d": 14}


def resolve_auto_sizes(cfg: DictConfig) -> None:
    """``data.patch_size=auto``: the network's smallest input, at least 32 voxels per axis
    (``tumorseg.sizes.auto_patch_edge``); ``data.samples_per_volume=auto`` and ``data.batch_size=auto``:
    128 and 64 // the patch's longest edge (``tumorseg.sizes.auto_counts``); ``trainer.max_epochs=auto``:
    ``AUTO_EPOCHS`` of the network. They are written into ``cfg`` before anything is built, so the
    run's config holds the numbers."""
    if str(cfg.trainer.get("max_epochs")) == AUTO:
        cfg.trainer.max_epochs = AUTO_EPOCHS.get(cfg.model.network.name, 10)
    if str(cfg.data.get("patch_size")) == AUTO:
        from tumorseg.inference.schemes import out_channels
        from tumorseg.models import build_model

        args = OmegaConf.to_container(cfg.model.network, resolve=True)
        name, preset = args.pop("name"), args.pop("preset", "light")
        with torch.device("meta"):  # sizes only: no memory, no initialisation cost, whatever the preset
            net = build_model(
                name,
                preset,
                out_channels=out_channels(cfg.model.labels, cfg.model.get("label_set", "brats2023")),
                **args,
            )
        cfg.data.patch_size = auto_patch_edge(net.min_input_size)
    samples, batch = str(cfg.data.get("samples_per_volume")), str(cfg.data.get("batch_size"))
    if AUTO not in (samples, batch):
        return
    auto_samples, auto_batch = auto_counts(cfg.data.patch_size, "data.patch_size")
    if samples == AUTO:
        cfg.data.samples_per_volume = auto_samples
    if batch == AUTO:
        cfg.data.batch_size = auto_batch


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, SegmentationModule]:
    """The datamodule and the model of a composed config, checked against each other."""
    resolve_auto_sizes(cfg)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    preprocess = OmegaConf.to_container(cfg.data.preprocess, resolve=True) if "preprocess" in cfg.data else None
    effective = getattr(datamodule, "preprocess_config", None)
    if preprocess is not None and effective is not None and effective.spacing is not None:
        # the grid the data chose (the phantoms': their voxel size), so prediction resamples to it
        preprocess["spacing"] = list(effective.spacing)
    # the network's input channels are the modalities the data keeps
    modalities = list((preprocess or {}).get("modalities") or MODALITIES)
    model: SegmentationModule = hydra.utils.instantiate(
        cfg.model,
        inference=OmegaConf.to_container(cfg.inference, resolve=True),
        preprocess=preprocess,
        modalities=modalities,
        max_nonfinite=cfg.max_nonfinite,
        compile=cfg.compile,
        channels_last=cfg.channels_last,
        _convert_="all",
    )
    check_sizes(model, datamodule)
    data_labels = getattr(datamodule, "label_set", model.label_set)
    if data_labels.name != model.label_set.name:
        raise ValueError(
            f"model.label_set={model.label_set.name} but data.label_set={data_labels.name}; set both with "
            f"labels={model.label_set.name} (the top-level option)."
        )
    return datamodule, model


def initial_weights(cfg: DictConfig, model: SegmentationModule, resumed: Path | None) -> None:
    """``init_from``: the network's weights from a checkpoint, URL or registered model
    (``tumorseg.training.init_from``), unless the run resumes, whose own weights then continue."""
    spec = cfg.get("init_from")
    if not spec:
        return
    if resumed is not None:
        log.info("init_from=%s is not used: the run resumes from %s, whose weights continue it.", spec, resumed)
        return
    from tumorseg.training.init_from import load_initial_weights

    load_initial_weights(model, str(spec), cfg.get("init_from_sha256"))


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit the configured model on the configured data.

    Returns:
        The final metrics (``trainer.callback_metrics`` as floats, plus ``best/<monitor>``) and the
        objects built (``trainer``, ``model``, ``datamodule``, ``best_checkpoint``).
    """
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path = checkpoint_to_resume(cfg)

    datamodule, model = build(cfg)
    initial_weights(cfg, model, resumed=ckpt_path)
    callbacks = instantiate_all(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_all(cfg.get("logger"), "logger")
    trainer_cfg = trainer_arguments(cfg.trainer)
    trainer: pl.Trainer = hydra.utils.instantiate(
        trainer_cfg, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )

    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        for logger in trainer.loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    try:
        # explicit: torch.load's own default is weights_only=True only from torch 2.6
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    finally:
        finish_wandb(trainer)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
    best = trainer.checkpoint_callback
    best_path = getattr(best, "best_model_path", "") or None
    if best_path and getattr(best, "best_model_score", None) is not None:
        metrics[f"best/{cfg.monitor.metric}"] = float(best.best_model_score)
    if trainer.is_global_zero:
        report(cfg, trainer, metrics, best_path)
    return metrics, {"trainer": trainer, "model": model, "datamodule": datamodule, "best_checkpoint": best_path}


def finish_wandb(trainer: pl.Trainer) -> None:
    """Close the W&B run, so its files are complete and the next run in this process (a sweep
    trial) starts its own."""
    from lightning.pytorch.loggers import WandbLogger

    finished = False
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero and logger._experiment is not None:
            logger.experiment.finish()
            finished = True
    if finished:
        import wandb

        wandb.teardown()  # finish() may return before wandb-core has written the last records


def report(cfg: DictConfig, trainer: pl.Trainer, metrics: dict[str, float], best_path: str | None) -> None:
    """Where the results are, and the final scores."""
    run_dir = Path(trainer.default_root_dir)
    monitor = cfg.monitor.metric
    lines = [f"Run directory: {run_dir}"]
    if monitor in metrics:
        labels = label_set(cfg.model.get("label_set", "brats2023"))
        regions = "  ".join(
            f"{labels.region_names[r]} {metrics[f'val/dice_{r}']:.3f}"
            for r in labels.regions
            if f"val/dice_{r}" in metrics
        )
        lines.append(f"Final {monitor}: {metrics[monitor]:.4f}  ({regions})")
    if f"best/{monitor}" in metrics:
        lines.append(f"Best {monitor}: {metrics[f'best/{monitor}']:.4f}")
    for label, path in (
        ("Best checkpoint", best_path),
        ("Last checkpoint", run_dir / "checkpoints" / "last.ckpt"),
        ("Loss/score plot", run_dir / "loss_score.png"),
        ("CSV metrics", run_dir / "csv" / "metrics.csv"),
    ):
        if path and Path(path).exists():
            lines.append(f"{label}: {path}")
    print("\n".join(lines), flush=True)


def run(cfg: DictConfig) -> float | None:
    """``train`` plus what the command line needs: the sweep objective, and training stopped by
    non-finite losses as exit status 1 (``EXIT_INCOMPLETE``). User errors (``ValueError``,
    ``OSError``, config errors) propagate to ``train.py``'s ``tumorseg.cli.hydra_command``, which
    explains them in one message and exits with status 2."""
    try:
        metrics, _ = train(cfg)
    except NonFiniteLossError as err:
        log.error("%s", err)
        if in_multirun():
            return float("nan")  # a failed trial, not a failed sweep
        raise SystemExit(EXIT_INCOMPLETE) from err
    value = metrics.get(cfg.monitor.metric)
    if value is None or not math.isfinite(value):
        log.warning("The monitored metric %s was not computed.", cfg.monitor.metric)
        return None
    return value

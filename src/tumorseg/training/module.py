"""The LightningModule that trains and validates any registered network.

Its hyper-parameters are plain data (names, numbers, lists, dicts): the network is rebuilt from
them, so a checkpoint loads with ``torch.load(path, weights_only=True)`` and
``SegmentationModule.load_from_checkpoint(path)`` needs no pickled objects.

Metrics are torchmetrics ``Metric`` objects: under DDP they are summed across ranks once, when
computed at the end of the epoch, so ranks may validate different numbers of cases.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torchmetrics import MeanMetric

from tumorseg.checkpoints import load_checkpoint
from tumorseg.inference.schemes import check_scheme, out_channels, probabilities, to_labels
from tumorseg.inference.sliding_window import InferenceConfig, sliding_window_logits
from tumorseg.labels import BRATS2023, MODALITIES, label_set, postprocess, remove_small_pieces
from tumorseg.models import build_model
from tumorseg.training.losses import SegmentationLoss
from tumorseg.training.metrics import RegionDice, dice_per_case

log = logging.getLogger(__name__)

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}
SCHEDULES = ("none", "poly", "cosine")
# test-time settings of ``inference`` besides the sliding window's; absent from checkpoints written
# before they had their own config group
TEST_TIME_DEFAULTS = {"mirror": False, "val_mirror": False, "et_min_voxels": 0, "wt_min_fraction": 0.0}


_label_set = label_set  # the constructor's argument of that name hides the function


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many consecutive non-finite losses."""


def check_fraction(value, option: str) -> float:
    """``value`` as a fraction in [0, 1]; a ValueError naming ``option`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"`{option}` must be a fraction from 0 (off) to 1 (keep the largest piece), got {value!r}.")
    return float(value)


def build_optimizer(params, config: dict) -> torch.optim.Optimizer:
    """``{"name": "adamw", "lr": 3e-4, ...}`` -> optimizer; the other keys go to its constructor."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in OPTIMIZERS:
        raise ValueError(f"`model.optimizer.name` must be one of {sorted(OPTIMIZERS)}, got {name!r}.")
    try:
        return OPTIMIZERS[name](params, **config)
    except TypeError as err:
        raise ValueError(f"`model.optimizer` ({name}): {err}") from err


def schedule_factor(name: str, total_steps: int, warmup_steps: int = 0, power: float = 0.9, min_factor: float = 0.0):
    """Learning-rate factor per optimizer step: linear warm-up, then poly (nnU-Net) or cosine decay."""
    if name not in SCHEDULES:
        raise ValueError(f"`model.scheduler.name` must be one of {list(SCHEDULES)}, got {name!r}.")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "none":
            return 1.0
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        decay = (1 - progress) ** power if name == "poly" else 0.5 * (1 + math.cos(math.pi * progress))
        return min_factor + (1 - min_factor) * decay

    return factor


class SegmentationModule(pl.LightningModule):
    """Trains any network of ``tumorseg.models`` on BraTS label maps.

    Args:
        network: ``build_model`` arguments: ``name``, ``preset`` and constructor overrides
            (``features``, ``norm``, ``dropout``, ...). ``in_channels`` and ``out_channels`` follow
            from ``modalities`` and ``labels``.
        labels: label scheme, ``"regions"`` (sigmoid WT/TC/ET) or ``"softmax4"`` (background, NCR,
            ED, ET). Defaults to ``"regions"``.
        label_set: the classes and regions learned (``tumorseg.labels``): ``"brats2023"`` or
            ``"brats2024"`` (post-treatment: 4 sigmoid channels WT/TC/ET/RC, or 5 softmax classes).
            Checkpoints written before it existed load as ``"brats2023"``. Defaults to ``"brats2023"``.
        modalities: input channels, in order. Defaults to FLAIR, T1, T1ce, T2.
        loss: ``SegmentationLoss`` arguments (``name``, ``dice_weight``, ``ce_weight``, ...).
            Defaults to Dice + BCE for regions, Dice + CE for softmax4.
        aux_weight: weight of the auxiliary head's loss (PSPNet with ``aux_head``). Defaults to 0.4.
        optimizer: ``{"name": adam|adamw|rmsprop|sgd, **constructor arguments}``.
            Defaults to AdamW, lr 3e-4, weight decay 1e-5.
        scheduler: ``{"name": none|poly|cosine, "warmup_epochs", "power", "min_lr_factor"}``,
            stepped every optimizer step. Defaults to poly with power 0.9.
        inference: test-time settings (``conf/inference``): the sliding window (``roi_size``,
            ``overlap``, ``sw_batch_size``, ``mode``) of validation and prediction, ``mirror``
            (prediction), ``val_mirror`` (validation) and the post-processing ``et_min_voxels`` and
            ``wt_min_fraction``;
            recorded so that prediction repeats them.
        preprocess: the data's preprocessing settings, kept so that prediction repeats them.
        max_nonfinite: consecutive non-finite losses (each step skipped) that stop training.
            Defaults to 5.
        channels_last: run the network in channels-last-3d memory format. Defaults to False.
        compile: ``torch.compile`` the network in place (parameter names unchanged). Defaults to False.
    """

    def __init__(
        self,
        network: dict,
        *,
        labels: str = "regions",
        label_set: str = BRATS2023.name,
        modalities: Sequence[str] = MODALITIES,
        loss: dict | None = None,
        aux_weight: float = 0.4,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        inference: dict | None = None,
        preprocess: dict | None = None,
        max_nonfinite: int = 5,
        channels_last: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        check_scheme(labels)
        self.label_set = _label_set(label_set)
        modalities = list(modalities)
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"`modalities` must be distinct names, got {modalities!r}.")
        if isinstance(max_nonfinite, bool) or not isinstance(max_nonfinite, int) or max_nonfinite < 1:
            raise ValueError(f"`max_nonfinite` must be a positive integer, got {max_nonfinite!r}.")
        network = dict(network)
        if "name" not in network:
            raise ValueError("`model.network.name` is missing; choose arunet3d, linknet3d or pspnet3d.")
        loss = dict(loss) if loss else {"name": "dice_bce" if labels == "regions" else "dice_ce"}
        self.save_hyperparameters(
            {
                "network": network,
                "labels": labels,
                "label_set": self.label_set.name,
                "modalities": modalities,
                "loss": loss,
                "aux_weight": float(aux_weight),
                "optimizer": dict(optimizer) if optimizer else {"name": "adamw", "lr": 3e-4, "weight_decay": 1e-5},
                "scheduler": dict(scheduler) if scheduler else {"name": "poly", "power": 0.9},
                "inference": {**TEST_TIME_DEFAULTS, **(inference or {})},
                "preprocess": dict(preprocess) if preprocess else {},
                "max_nonfinite": max_nonfinite,
                "channels_last": bool(channels_last),
                "compile": bool(compile),
            }
        )
        net_args = dict(network)
        name, preset = net_args.pop("name"), net_args.pop("preset", "light")
        self.net = build_model(
            name, preset, in_channels=len(modalities), out_channels=out_channels(labels, self.label_set), **net_args
        )
        self.scheme = labels
        self.loss_fn = SegmentationLoss(labels, **loss, labels=self.label_set)
        et_min_voxels = self.hparams.inference["et_min_voxels"]
        if isinstance(et_min_voxels, bool) or not isinstance(et_min_voxels, int) or et_min_voxels < 0:
            raise ValueError(f"`inference.et_min_voxels` must be 0 or more voxels, got {et_min_voxels!r}.")
        check_fraction(self.hparams.inference["wt_min_fraction"], "inference.wt_min_fraction")
        window = {k: v for k, v in self.hparams.inference.items() if k not in TEST_TIME_DEFAULTS}
        self.inference_config = InferenceConfig(**window, mirror=self.hparams.inference["val_mirror"])
        if channels_last:
            self.net.to(memory_format=torch.channels_last_3d)
        self._compiled = False

        self.train_loss, self.train_dice_loss = MeanMetric(), MeanMetric()
        # the Dice loss of the epoch's last training batch, logged as train/dice_loss_last_batch: the
        # paper's training "Dice score" per epoch is 1 minus it (train/dice_loss is the epoch's mean)
        self.last_batch_dice_loss: torch.Tensor | None = None
        self.val_loss, self.val_dice_loss = MeanMetric(), MeanMetric()
        self.train_dice = RegionDice(per_case=False, labels=self.label_set)
        self.val_dice = RegionDice(per_case=True, labels=self.label_set)
        # NCR, ED: the paper's classes (the classes that are regions of their own are logged once)
        self.val_class_dice = RegionDice(per_case=True, kind="classes", labels=self.label_set)
        self.nonfinite = {"total": 0, "streak": 0, "epoch": 0}
        self.keep_val_sample = False  # set by callbacks that draw a validation case
        self.val_sample: dict | None = None
        # where the initial weights came from (init_from; tumorseg.training.init_from), kept in checkpoints
        self.init_source: dict | None = None

    # -- network

    def configure_model(self) -> None:
        # nn.Module.compile keeps parameter names, so checkpoints do not gain `_orig_mod.`
        if self.hparams.compile and not self._compiled:
            self.net.compile()
            self._compiled = True

    def forward(self, image: torch.Tensor):
        if self.hparams.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        return self.net(image)

    def predict_logits(self, image: torch.Tensor, config: InferenceConfig | None = None, **kwargs) -> torch.Tensor:
        """Sliding-window logits over whole cases (B, M, X, Y, Z), as validation computes them."""
        return sliding_window_logits(self, image, config or self.inference_config, **kwargs)

    def _to_labels(self, probs: torch.Tensor) -> torch.Tensor:
        return to_labels(probs, self.scheme, labels=self.label_set)

    def postprocess(self, labels: torch.Tensor, source_voxels: torch.Tensor | None = None) -> torch.Tensor:
        """The test-time post-processing of ``inference`` (``wt_min_fraction``, ``et_min_voxels``),
        as prediction applies it, on a batch of label maps (B, X, Y, Z), so that validation scores
        what ``predict.py`` writes. ``source_voxels``: the source voxels per voxel of each case
        (the cache's resampling), which ``et_min_voxels`` counts in. Defaults to None (1)."""
        fraction = float(self.hparams.inference["wt_min_fraction"])
        et_min_voxels = int(self.hparams.inference["et_min_voxels"])
        if fraction <= 0 and et_min_voxels <= 0:
            return labels
        out = []
        for index, case in enumerate(labels.cpu().numpy()):
            case, _ = remove_small_pieces(case, fraction)
            scale = float(source_voxels[index]) if source_voxels is not None else 1.0
            case, _ = postprocess(case, math.ceil(et_min_voxels / scale))
            out.append(torch.from_numpy(case))
        return torch.stack(out).to(labels.device)

    # -- training

    def _skip_nonfinite(self, loss: torch.Tensor) -> bool:
        """Whether this step is skipped; decided on every rank together so DDP stays in step."""
        bad = not bool(torch.isfinite(loss.detach()).all())
        bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            self.nonfinite["streak"] = 0
            return False
        self.nonfinite["total"] += 1
        self.nonfinite["streak"] += 1
        self.nonfinite["epoch"] += 1
        limit = self.hparams.max_nonfinite
        streak = self.nonfinite["streak"]
        if self.trainer.is_global_zero:
            log.warning(
                "Non-finite loss at epoch %d, step %d: step skipped (%d in a row, stop at %d).",
                self.current_epoch, self.global_step, streak, limit,
            )  # fmt: skip
        if streak >= limit:
            ckpt_dir = getattr(self.trainer.checkpoint_callback, "dirpath", None) or self.trainer.default_root_dir
            path = Path(ckpt_dir) / "nonfinite-stop.ckpt"
            self.trainer.save_checkpoint(path)
            raise NonFiniteLossError(
                f"Training stopped: the loss was not finite for {streak} consecutive steps (epoch "
                f"{self.current_epoch}, step {self.global_step}; {self.nonfinite['total']} non-finite steps in "
                f"all). The weights from before these steps are saved in {path}. Lower the learning rate "
                f"(model.optimizer.lr), train in full precision (trainer.precision=32), or check the data "
                f"(python -m tumorseg.data check <root>); raise `max_nonfinite` to tolerate longer streaks."
            )
        return True

    def training_step(self, batch: dict, batch_idx: int):
        image, label = batch["image"], batch["label"]
        out = self(image)
        aux = None
        if isinstance(out, tuple):
            out, aux = out
        parts = self.loss_fn(out, label)
        loss = parts["loss"]
        if aux is not None:
            loss = loss + self.hparams.aux_weight * self.loss_fn(aux, label)["loss"]
        if self._skip_nonfinite(loss):
            return None  # Lightning then skips backward and the optimizer step
        self.train_loss.update(loss.detach())
        self.train_dice_loss.update(parts["dice"].detach())
        self.last_batch_dice_loss = parts["dice"].detach()
        with torch.no_grad():
            self.train_dice.update(self._to_labels(probabilities(out.detach(), self.scheme)), label)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=image.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        dice = self.train_dice.compute()
        values = {f"train/dice_{k}": v for k, v in dice.items()}
        values["train/loss"] = self.train_loss.compute()
        values["train/dice_loss"] = self.train_dice_loss.compute()
        if self.last_batch_dice_loss is not None:  # none when every step of the epoch was skipped
            values["train/dice_loss_last_batch"] = self.last_batch_dice_loss
        values["train/nonfinite_steps"] = float(self.nonfinite["epoch"])  # a number: logged on the device
        self.log_dict(values, sync_dist=True)
        for metric in (self.train_dice, self.train_loss, self.train_dice_loss):
            metric.reset()
        self.nonfinite["epoch"] = 0
        self.last_batch_dice_loss = None

    # -- validation

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        """Scores whole cases; returns their ids, the label set's regions and their Dice (B, regions)
        for callbacks (``ValidationCases``)."""
        image, label = batch["image"], batch["label"]
        logits = self.predict_logits(image)
        parts = self.loss_fn(logits, label)
        pred = self.postprocess(self._to_labels(probabilities(logits, self.scheme)), batch.get("source_voxels"))
        self.val_loss.update(parts["loss"])
        self.val_dice_loss.update(parts["dice"])
        self.val_dice.update(pred, label)
        self.val_class_dice.update(pred, label)
        if self.keep_val_sample and batch_idx == 0 and not self.trainer.sanity_checking:
            self.val_sample = {
                "case_id": batch["case_id"][0],
                "image": image[0].half().cpu().numpy(),
                "label": label[0].cpu().numpy(),
                "pred": pred[0].cpu().numpy(),
            }
        return {
            "case_id": list(batch["case_id"]),
            "regions": self.label_set.regions,
            "dice": dice_per_case(pred, label, labels=self.label_set),
        }

    def on_validation_epoch_end(self) -> None:
        dice = self.val_dice.compute()
        values = {f"val/dice_{k}": v for k, v in dice.items()}
        classes = self.val_class_dice.compute()
        for name in self.label_set.classes[1:]:
            if name not in self.label_set.regions:
                values[f"val/dice_{name}"] = classes[name]
        values["val/dice_classes_mean"] = classes["mean"]
        values["val/loss"] = self.val_loss.compute()
        values["val/dice_loss"] = self.val_dice_loss.compute()
        # already summed over ranks by torchmetrics; sync_dist averages equal values (no warning)
        self.log_dict(values, sync_dist=True, prog_bar=False)
        self.log("dice", values["val/dice_mean"], prog_bar=True, logger=False, sync_dist=True)
        for metric in (self.val_dice, self.val_class_dice, self.val_loss, self.val_dice_loss):
            metric.reset()

    # -- optimisation

    def configure_optimizers(self):
        optimizer = build_optimizer(self.net.parameters(), self.hparams.optimizer)
        sched = dict(self.hparams.scheduler)
        name = sched.pop("name", "none")
        warmup_epochs = sched.pop("warmup_epochs", 0)
        power, min_factor = sched.pop("power", 0.9), sched.pop("min_lr_factor", 0.0)
        if sched:
            raise ValueError(
                f"`model.scheduler`: unknown keys {sorted(sched)}; valid: name, warmup_epochs, power, min_lr_factor."
            )
        if name == "none" and not warmup_epochs:
            schedule_factor(name, 1)  # validates the name
            return optimizer
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                f"`model.scheduler.name={name}` needs a finite number of steps; set trainer.max_epochs or max_steps."
            )
        epochs = max(self.trainer.max_epochs or 1, 1)
        warmup = int(round(warmup_epochs * total / epochs))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, schedule_factor(name, int(total), warmup, power, min_factor)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nonfinite"] = {k: int(v) for k, v in self.nonfinite.items()}
        checkpoint["regions"] = list(self.label_set.regions)
        if self.init_source is not None:
            checkpoint["init_from"] = dict(self.init_source)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite.update(checkpoint.get("nonfinite", {}))
        # a resumed run's weights descend from what its first run started from
        self.init_source = checkpoint.get("init_from")


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> SegmentationModule:
    """Rebuild the trained ``SegmentationModule`` of a checkpoint, in eval mode.

    The network is built from the checkpoint's hyper-parameters and its weights are loaded
    strictly, so a checkpoint of a different network version fails here rather than predicting
    with partly random weights.

    Args:
        path: a local checkpoint file (``tumorseg.checkpoints.resolve_checkpoint`` finds URLs and names).
        map_location: device of the returned model. Defaults to ``"cpu"``.

    Raises:
        ValueError: the file is not a tumorseg checkpoint, its hyper-parameters are not accepted
            by this version, or its weights do not fit the network (missing, unexpected or
            differently shaped parameters).
    """
    path = Path(path).expanduser()
    ckpt = load_checkpoint(path)
    try:
        model = SegmentationModule(**ckpt["hyper_parameters"])
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: its hyper-parameters do not build a network with this tumorseg version: {err}"
        ) from err
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        # torch lists every missing/unexpected/misshaped key; keep it, it shows what changed
        raise ValueError(
            f"{path}: its weights do not fit the {ckpt['hyper_parameters']['network'].get('name')} network "
            f"rebuilt from its hyper-parameters (written by a different version of the network?):\n{err}"
        ) from err
    model.on_load_checkpoint(ckpt)
    return model.to(map_location).eval()


# ------------------------------------------------------------------------------------ summary

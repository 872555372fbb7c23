"""Training losses for both label schemes: soft Dice, optionally plus (binary) cross-entropy.

``dice`` is the paper's loss. ``dice_ce`` (softmax4) adds cross-entropy over the four classes and
``dice_bce`` (regions) adds binary cross-entropy per region channel, the compound losses most
BraTS baselines (nnU-Net among them) train with. The Dice term is MONAI's ``DiceLoss``.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn

from tumorseg.inference.schemes import check_scheme, out_channels, targets
from tumorseg.labels import BRATS2023, LabelSet, label_set

LOSSES = ("dice", "dice_ce", "dice_bce")
# the losses each scheme accepts: a CE term must match the output activation
SCHEME_LOSSES = {"regions": ("dice", "dice_bce"), "softmax4": ("dice", "dice_ce")}


class SegmentationLoss(nn.Module):
    """Soft Dice loss, optionally plus cross-entropy, on the logits of a label scheme.

    Args:
        scheme: label scheme of the network output, ``"regions"`` (3 sigmoid channels WT/TC/ET)
            or ``"softmax4"`` (4 softmax classes).
        name: ``"dice"`` (soft Dice only, the paper's loss), ``"dice_ce"`` (softmax4 only: Dice
            plus cross-entropy) or ``"dice_bce"`` (regions only: Dice plus binary cross-entropy
            with logits). Defaults to ``"dice"``.
        dice_weight: weight of the Dice term in the total. Defaults to 1.0.
        ce_weight: weight of the (binary) cross-entropy term in the total; unused by ``"dice"``.
            Defaults to 1.0.
        include_background: whether the Dice term of softmax4 averages over the background class
            too; the region channels have no background, so regions ignore it. Defaults to True.
        batch_dice: compute Dice over the whole batch as one volume per channel instead of per
            sample and then averaging (steadier when patches hold little or no tumour).
            Defaults to False.
        smooth: added to the Dice numerator and denominator, so that empty channels give a
            finite loss. Defaults to 1e-5.
        labels: the label set (``tumorseg.labels``), which sets the channels of each scheme.
            Defaults to BraTS 2023.

    Raises:
        ValueError: on an unknown scheme or loss name, a loss that does not fit the scheme, or a
            negative weight or smoothing term.
    """

    def __init__(
        self,
        scheme: str,
        name: str = "dice",
        *,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        include_background: bool = True,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        labels: LabelSet | str = BRATS2023,
    ):
        super().__init__()
        self.scheme = check_scheme(scheme)
        if name not in LOSSES:
            raise ValueError(f"Unknown loss name {name!r}; choose one of {list(LOSSES)}.")
        if name not in SCHEME_LOSSES[scheme]:
            raise ValueError(
                f"Loss name {name!r} does not fit label scheme {scheme!r}; "
                f"with {scheme!r} choose one of {list(SCHEME_LOSSES[scheme])}."
            )
        for option, value in (("dice_weight", dice_weight), ("ce_weight", ce_weight), ("smooth", smooth)):
            if value < 0:
                raise ValueError(f"{option} must be >= 0, got {value}.")
        self.name = name
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.labels = label_set(labels)
        self.channels = out_channels(scheme, self.labels)
        if scheme == "regions":
            self.dice = DiceLoss(sigmoid=True, batch=batch_dice, smooth_nr=smooth, smooth_dr=smooth)
            # not monai's DiceCELoss: with several channels it applies softmax cross-entropy,
            # which is wrong for overlapping sigmoid regions
            self.ce: nn.Module | None = nn.BCEWithLogitsLoss() if name == "dice_bce" else None
        else:
            self.dice = DiceLoss(
                softmax=True,
                to_onehot_y=True,
                include_background=include_background,
                batch=batch_dice,
                smooth_nr=smooth,
                smooth_dr=smooth,
            )
            self.ce = nn.CrossEntropyLoss() if name == "dice_ce" else None

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute the loss.

        Args:
            logits: raw network output (B, C, *S); any float dtype, the loss is computed in float32.
            label: internal label map (B, *S) of integers 0-3 (0 background, 1 NCR, 2 ED, 3 ET; 0-4 for
                BraTS 2024).

        Returns:
            ``{"loss": total, "dice": Dice term}``, plus ``"ce"`` (the unweighted (binary)
            cross-entropy term) for ``"dice_ce"`` and ``"dice_bce"``; the total is
            ``dice_weight * dice + ce_weight * ce``.

        Raises:
            ValueError: when the channel count of ``logits`` does not fit the scheme, or ``label``
                does not have the batch and spatial shape of ``logits``.
        """
        if logits.ndim < 3 or logits.shape[1] != self.channels:
            raise ValueError(
                f"Label scheme {self.scheme!r} expects logits with {self.channels} channels (B, {self.channels}, *S), "
                f"got shape {tuple(logits.shape)}; the network's out_channels must match the scheme."
            )
        if label.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(
                f"label shape {tuple(label.shape)} does not fit logits shape {tuple(logits.shape)}; "
                f"expected a label map of shape {tuple(logits.shape[:1] + logits.shape[2:])}."
            )
        # sums over whole volumes and log-softmax lose too much precision in bf16/fp16, so the
        # loss runs in float32 even inside an autocast region
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            target = targets(label, self.scheme, self.labels)
            dice = self.dice(logits, target)
            out = {"dice": dice}
            total = self.dice_weight * dice
            if self.ce is not None:
                # CrossEntropyLoss takes class indices (B, *S), BCEWithLogitsLoss the region masks
                ce = self.ce(logits, target[:, 0] if self.scheme == "softmax4" else target)
                out["ce"] = ce
                total = total + self.ce_weight * ce
        return {"loss": total, **out}


__all__ = ["LOSSES", "SCHEME_LOSSES", "SegmentationLoss"]

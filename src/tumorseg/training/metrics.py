"""Hard Dice of the BraTS regions (WT, TC and ET; those of the label set) on internal label maps, during training.

The Dice is ``tumorseg.evaluate.metrics.dice_from_counts``, the one the evaluation computes, so
``dice_per_case`` follows the BraTS evaluation convention for empty masks: a region absent from
both prediction and reference scores 1, a region present in only one of them scores 0.
``RegionDice`` averages it over cases (validation) or pools voxel counts over everything it has
seen (training patches, where many patches hold no tumour and per-case scores would be noisy).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torchmetrics import Metric

from tumorseg.evaluate.metrics import dice_from_counts
from tumorseg.labels import BRATS2023, LabelSet, label_set, to_classes, to_regions


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must be label maps of the same shape (B, *S), got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}."
        )
    if pred.ndim < 2:
        raise ValueError(f"expected label maps of shape (B, *S), got shape {tuple(pred.shape)}.")


def masks_of(labels: LabelSet | str = BRATS2023) -> dict:
    """kind -> (names of the masks, label map (B, *S) -> boolean masks (B, R, *S)): the label set's
    regions, or its tumour classes."""
    labels = label_set(labels)
    return {
        "regions": (labels.regions, partial(to_regions, axis=1, label_set=labels)),
        "classes": (
            tuple(labels.classes[c] for c in labels.tumour_classes),
            partial(to_classes, axis=1, label_set=labels),
        ),
    }


MASKS = masks_of(BRATS2023)


def _region_counts(
    pred: torch.Tensor, target: torch.Tensor, kind: str = "regions", labels: LabelSet | str = BRATS2023
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per case and region (or class) voxel counts (B, R), int64: intersection, prediction, reference."""
    masks = masks_of(labels)[kind][1]
    p = masks(pred).flatten(2)
    t = masks(target).flatten(2)
    return (p & t).sum(-1), p.sum(-1), t.sum(-1)


def _dice(intersection: torch.Tensor, pred_sum: torch.Tensor, target_sum: torch.Tensor) -> torch.Tensor:
    """Dice in float64 from integer voxel counts (see ``dice_from_counts``)."""
    return dice_from_counts(intersection.double(), pred_sum.double(), target_sum.double())


def dice_per_case(
    pred: torch.Tensor, target: torch.Tensor, kind: str = "regions", labels: LabelSet | str = BRATS2023
) -> torch.Tensor:
    """Hard Dice per case and region, with the BraTS rules for empty masks.

    Args:
        pred: predicted internal label map (B, *S) of integers 0-3.
        target: reference internal label map of the same shape.
        kind: ``"regions"`` (WT, TC, ET) or ``"classes"`` (NCR, ED, ET). Defaults to ``"regions"``.
        labels: the label set, whose regions or tumour classes are scored. Defaults to BraTS 2023.

    Returns:
        float64 tensor (B, R) on the inputs' device, columns in ``REGIONS`` order (WT, TC, ET) or NCR, ED, ET
        (the label set's regions or tumour classes): 1.0 where the region is empty in both, 0.0 where it is
        empty in exactly one.

    Raises:
        ValueError: when the shapes differ or the maps have no batch dimension.
    """
    _check_pair(pred, target)
    return _dice(*_region_counts(pred, target, kind, labels))


class RegionDice(Metric):
    """Hard Dice of WT, TC and ET between predicted and reference internal label maps.

    Args:
        per_case: average the Dice of each case (the BraTS convention, for validation on whole
            volumes; see ``dice_per_case`` for empty masks). If False, pool intersection and mask
            sizes over all voxels seen and compute one Dice per region (for training patches);
            a region empty everywhere then scores 1.0. Defaults to True.
        kind: ``"regions"`` (WT, TC, ET) or ``"classes"`` (NCR, ED, ET: the paper's softmax
            classes). Defaults to ``"regions"``.
        labels: the label set (``tumorseg.labels``): its regions or tumour classes are scored, e.g.
            ET, NETC, SNFH, RC, TC, WT for BraTS 2024. Defaults to BraTS 2023.
        **kwargs: passed on to ``torchmetrics.Metric`` (e.g. ``sync_on_compute``).

    ``compute()`` returns float32 tensors ``{"wt", "tc", "et", "mean"}`` (or ``{"ncr", "ed", "et",
    "mean"}``), ``mean`` being the average of the three (of all the label set's regions or classes).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, per_case: bool = True, kind: str = "regions", labels: LabelSet | str = BRATS2023, **kwargs: Any):
        super().__init__(**kwargs)
        if kind not in MASKS:
            raise ValueError(f"`kind` must be one of {sorted(MASKS)}, got {kind!r}.")
        self.per_case, self.kind, self.labels = per_case, kind, label_set(labels)
        n = len(masks_of(self.labels)[kind][0])
        if per_case:
            self.add_state("dice_sum", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("cases", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        else:
            # exact voxel counts; they are summed over a whole epoch of patches
            for name in ("intersection", "pred_sum", "target_sum"):
                self.add_state(name, default=torch.zeros(n, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and reference internal label maps, both (B, *S)."""
        _check_pair(pred, target)
        if self.per_case:
            self.dice_sum += dice_per_case(pred, target, self.kind, self.labels).sum(0)
            self.cases += pred.shape[0]
        else:
            intersection, pred_sum, target_sum = _region_counts(pred, target, self.kind, self.labels)
            self.intersection += intersection.sum(0)
            self.pred_sum += pred_sum.sum(0)
            self.target_sum += target_sum.sum(0)

    def compute(self) -> dict[str, torch.Tensor]:
        if self.per_case:
            # no cases seen gives NaN (torchmetrics also warns that update was never called)
            dice = self.dice_sum / self.cases
        else:
            dice = _dice(self.intersection, self.pred_sum, self.target_sum)
        dice = dice.float()
        names = masks_of(self.labels)[self.kind][0]
        return {**{name: dice[i] for i, name in enumerate(names)}, "mean": dice.mean()}


__all__ = ["MASKS", "RegionDice", "dice_per_case", "masks_of"]

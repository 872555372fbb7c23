"""Losses and the region Dice metric against hand-written and MONAI references, incl. a 2-process sync."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric

from tumorseg.training.losses import SegmentationLoss
from tumorseg.training.metrics import RegionDice, dice_per_case

SMOOTH = 1e-5


def _random_case(shape=(2, 5, 6, 7), channels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], channels, *shape[1:], generator=g)
    label = torch.randint(0, 4, shape, generator=g)
    return logits, label


def _regions(label: torch.Tensor) -> torch.Tensor:
    """Region masks written out independently of tumorseg.inference.schemes: WT = 1|2|3, TC = 1|3, ET = 3."""
    return torch.stack([label > 0, (label == 1) | (label == 3), label == 3], dim=1).float()


def _soft_dice(probs: torch.Tensor, onehot: torch.Tensor, batch: bool = False) -> torch.Tensor:
    """1 - mean over channels (and cases unless batch) of (2 sum(p g) + s) / (sum p + sum g + s)."""
    dims = [0, *range(2, probs.ndim)] if batch else list(range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + SMOOTH) / (denom + SMOOTH)).mean()


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_softmax4_matches_reference(batch_dice, include_background):
    logits, label = _random_case()
    out = SegmentationLoss("softmax4", include_background=include_background, batch_dice=batch_dice)(logits, label)
    assert set(out) == {"loss", "dice"}
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(label, 4).movedim(-1, 1).float()
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    ref = _soft_dice(probs, onehot, batch=batch_dice)
    torch.testing.assert_close(out["dice"], ref)
    torch.testing.assert_close(out["loss"], ref)


def test_batch_dice_differs_from_per_case_dice():
    # a case without ET: per case its ET channel is an (almost) empty-vs-empty pair, pooled it is not
    logits, label = _random_case(seed=1)
    label[0][label[0] == 3] = 2
    per_case = SegmentationLoss("softmax4")(logits, label)["dice"]
    pooled = SegmentationLoss("softmax4", batch_dice=True)(logits, label)["dice"]
    assert not torch.allclose(per_case, pooled)


@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_ce_matches_reference(batch_dice):
    logits, label = _random_case(seed=2)
    loss = SegmentationLoss("softmax4", "dice_ce", dice_weight=0.7, ce_weight=1.3, batch_dice=batch_dice)
    out = loss(logits, label)
    assert set(out) == {"loss", "dice", "ce"}
    dice = _soft_dice(torch.softmax(logits, 1), F.one_hot(label, 4).movedim(-1, 1).float(), batch=batch_dice)
    ce = F.cross_entropy(logits, label)
    torch.testing.assert_close(out["dice"], dice)
    torch.testing.assert_close(out["ce"], ce)
    torch.testing.assert_close(out["loss"], 0.7 * dice + 1.3 * ce)


def test_dice_ce_matches_monai_dicece():
    # softmax (not sigmoid) is the case where MONAI's DiceCELoss is right, so it is a second reference
    logits, label = _random_case(seed=3)
    ref = DiceCELoss(to_onehot_y=True, softmax=True, smooth_nr=SMOOTH, smooth_dr=SMOOTH)(logits, label[:, None])
    torch.testing.assert_close(SegmentationLoss("softmax4", "dice_ce")(logits, label)["loss"], ref)


@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_bce_matches_reference(batch_dice):
    logits, label = _random_case(channels=3, seed=4)
    out = SegmentationLoss("regions", "dice_bce", dice_weight=2.0, ce_weight=0.5, batch_dice=batch_dice)(logits, label)
    assert set(out) == {"loss", "dice", "ce"}
    regions = _regions(label)
    dice = _soft_dice(torch.sigmoid(logits), regions, batch=batch_dice)
    bce = F.binary_cross_entropy_with_logits(logits, regions)
    torch.testing.assert_close(out["dice"], dice)
    torch.testing.assert_close(out["ce"], bce)
    torch.testing.assert_close(out["loss"], 2.0 * dice + 0.5 * bce)


def test_dice_regions_matches_reference_and_ignores_include_background():
    logits, label = _random_case(channels=3, seed=5)
    out = SegmentationLoss("regions")(logits, label)
    assert set(out) == {"loss", "dice"}
    torch.testing.assert_close(out["loss"], _soft_dice(torch.sigmoid(logits), _regions(label)))
    # the region channels have no background channel to drop
    torch.testing.assert_close(
        SegmentationLoss("regions", include_background=False)(logits, label)["loss"], out["loss"]
    )


@pytest.mark.parametrize(("scheme", "name"), [("softmax4", "dice"), ("softmax4", "dice_ce"), ("regions", "dice_bce")])
def test_perfect_logits_give_near_zero_loss(scheme, name):
    _, label = _random_case(seed=6)
    label[1][label[1] == 3] = 1  # an absent class/region must not cost anything either
    target = F.one_hot(label, 4).movedim(-1, 1).float() if scheme == "softmax4" else _regions(label)
    # +-30, not +-20: an absent sigmoid region sums sigmoid(-20) = 2e-9 per voxel, not small against smooth = 1e-5
    out = SegmentationLoss(scheme, name)(30.0 * (2 * target - 1), label)
    assert out["dice"] < 1e-4
    assert out["loss"] < 1e-4


@pytest.mark.parametrize(("scheme", "name"), [("softmax4", "dice"), ("softmax4", "dice_ce"), ("regions", "dice_bce")])
def test_gradients_flow(scheme, name):
    logits, label = _random_case(channels=4 if scheme == "softmax4" else 3, seed=7)
    logits.requires_grad_(True)
    SegmentationLoss(scheme, name)(logits, label)["loss"].backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize(("scheme", "name"), [("softmax4", "dice_ce"), ("regions", "dice_bce")])
def test_bf16_logits_are_computed_in_float32(scheme, name):
    logits, label = _random_case(channels=4 if scheme == "softmax4" else 3, seed=8)
    half = logits.bfloat16().requires_grad_(True)
    loss = SegmentationLoss(scheme, name)
    out = loss(half, label)
    assert all(v.dtype == torch.float32 for v in out.values())
    torch.testing.assert_close(out["loss"], loss(half.detach().float(), label)["loss"])
    out["loss"].backward()
    assert half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(half.detach(), label)["loss"].dtype == torch.float32


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("softmax3",), {}, r"label scheme 'softmax3'.*\['regions', 'softmax4'\]"),
        (("softmax4", "focal"), {}, r"loss name 'focal'.*\['dice', 'dice_ce', 'dice_bce'\]"),
        (("softmax4", "dice_bce"), {}, r"'dice_bce' does not fit label scheme 'softmax4'.*\['dice', 'dice_ce'\]"),
        (("regions", "dice_ce"), {}, r"'dice_ce' does not fit label scheme 'regions'.*\['dice', 'dice_bce'\]"),
        (("regions",), {"dice_weight": -1.0}, "dice_weight must be >= 0"),
        (("softmax4", "dice_ce"), {"ce_weight": -0.1}, "ce_weight must be >= 0"),
        (("softmax4",), {"smooth": -1e-5}, "smooth must be >= 0"),
    ],
)
def test_loss_argument_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SegmentationLoss(*args, **kwargs)


@pytest.mark.parametrize(("scheme", "channels", "expected"), [("softmax4", 3, 4), ("regions", 4, 3)])
def test_loss_channel_mismatch(scheme, channels, expected):
    logits, label = _random_case(channels=channels)
    with pytest.raises(
        ValueError, match=rf"{scheme}' expects logits with {expected} channels.*out_channels must match"
    ):
        SegmentationLoss(scheme)(logits, label)


def test_loss_label_shape_mismatch():
    logits, label = _random_case()
    with pytest.raises(ValueError, match="label shape"):
        SegmentationLoss("softmax4")(logits, label[..., :-1])
    with pytest.raises(ValueError, match="label shape"):
        SegmentationLoss("softmax4")(logits, label[:, None])


# ---------------------------------------------------------------- metric

# a 1x1x4x4 case counted by hand (0 background, 1 NCR, 2 ED, 3 ET)
TARGET = torch.tensor([[0, 0, 0, 0], [0, 2, 2, 0], [0, 1, 3, 0], [0, 0, 0, 0]])
PRED = torch.tensor([[0, 0, 0, 0], [2, 2, 2, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
# WT: target 4 voxels, prediction 5, overlap 4 -> 8/9; TC: 2, 2, overlap 2 -> 1; ET: 1, 0 -> 0 (one empty)
HAND = torch.tensor([8 / 9, 1.0, 0.0], dtype=torch.float64)


def _vol(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(1, 1, 4, 4)


def test_dice_per_case_by_hand():
    empty = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    pred = torch.cat([_vol(PRED), empty, _vol(PRED), empty]).to(torch.uint8)
    target = torch.cat([_vol(TARGET), empty, empty, _vol(TARGET)]).to(torch.uint8)
    dice = dice_per_case(pred, target)
    assert dice.shape == (4, 3) and dice.dtype == torch.float64
    torch.testing.assert_close(dice[0], HAND)
    torch.testing.assert_close(dice[1], torch.ones(3, dtype=torch.float64))  # both empty -> 1
    # only the reference empty -> 0; PRED has no ET either, so ET is empty in both -> 1
    torch.testing.assert_close(dice[2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(dice[3], torch.zeros(3, dtype=torch.float64))  # only the prediction empty -> 0


def test_region_dice_by_hand():
    empty = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    pred, target = torch.cat([_vol(PRED), empty]), torch.cat([_vol(TARGET), empty])

    per_case = RegionDice()
    per_case.update(pred, target)
    out = per_case.compute()
    assert set(out) == {"wt", "tc", "et", "mean"}
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in out.values())
    # case 2 is empty in both, so scores 1 in every region
    expected = {"wt": (8 / 9 + 1) / 2, "tc": 1.0, "et": 0.5}
    expected["mean"] = sum(expected.values()) / 3
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, abs=1e-6), key

    pooled = RegionDice(per_case=False)
    pooled.update(pred, target)
    out = pooled.compute()
    # pooled counts: I = (4, 2, 0), P = (5, 2, 0), T = (4, 2, 1)
    expected = {"wt": 8 / 9, "tc": 1.0, "et": 0.0, "mean": (8 / 9 + 1) / 3}
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, abs=1e-6), key

    pooled_empty = RegionDice(per_case=False)
    pooled_empty.update(empty, empty)
    assert all(v.item() == 1.0 for v in pooled_empty.compute().values())  # P + T == 0 -> 1


def _random_labels(n: int, seed: int, shape=(3, 5, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # sparse tumour so regions are often absent; force the empty cases explicitly too
    pred = torch.randint(0, 4, (n, *shape), generator=g) * (torch.rand(n, *shape, generator=g) < 0.4)
    target = torch.randint(0, 4, (n, *shape), generator=g) * (torch.rand(n, *shape, generator=g) < 0.4)
    pred[0], target[0] = 0, 0  # both empty
    if n > 2:
        target[1] = 0  # reference empty, prediction not
        pred[2] = 0  # prediction empty, reference not
    return pred, target


def test_region_dice_matches_monai():
    # MONAI's DiceMetric(ignore_empty=False) scores 1 when reference and prediction are both empty
    # and 0 when only the reference is empty (and, trivially, 0 when only the prediction is):
    # the BraTS rule we implement, so the two agree case by case and on the batch mean
    pred, target = _random_labels(7, seed=10)
    p, t = _regions(pred), _regions(target)
    ref_cases = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, t)
    torch.testing.assert_close(dice_per_case(pred, target).float(), ref_cases)

    monai_metric = DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=False)
    metric = RegionDice()
    for chunk in (slice(0, 3), slice(3, 7)):
        monai_metric(p[chunk], t[chunk])
        metric.update(pred[chunk], target[chunk])
    ref = monai_metric.aggregate()
    out = metric.compute()
    torch.testing.assert_close(torch.stack([out["wt"], out["tc"], out["et"]]), ref)
    torch.testing.assert_close(out["mean"], ref.mean())

    # pooled Dice = MONAI's Dice of one case made of all cases side by side
    pooled = RegionDice(per_case=False)
    pooled.update(pred, target)
    out = pooled.compute()
    ref = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(
        torch.cat(list(p), dim=1)[None], torch.cat(list(t), dim=1)[None]
    )[0]
    torch.testing.assert_close(torch.stack([out["wt"], out["tc"], out["et"]]), ref)


@pytest.mark.parametrize("per_case", [True, False])
def test_region_dice_accumulates(per_case):
    pred, target = _random_labels(6, seed=11)
    whole = RegionDice(per_case=per_case)
    whole.update(pred, target)
    parts = RegionDice(per_case=per_case)
    for chunk in (slice(0, 1), slice(1, 4), slice(4, 6)):
        batch_value = parts(pred[chunk], target[chunk])  # forward: this batch's value, state accumulates
        single = RegionDice(per_case=per_case)
        single.update(pred[chunk], target[chunk])
        for key, value in single.compute().items():
            torch.testing.assert_close(batch_value[key], value)
    for key, value in whole.compute().items():
        torch.testing.assert_close(parts.compute()[key], value)
    parts.reset()
    with pytest.warns(UserWarning, match="before the ``update`` method"):
        after_reset = parts.compute()["wt"]
    # nothing seen: no cases to average (NaN), or pooled counts all zero (1.0 by the empty rule)
    assert torch.isnan(after_reset) if per_case else after_reset == 1.0


def test_region_dice_errors_and_attributes():
    assert RegionDice.full_state_update is False
    assert RegionDice.higher_is_better is True
    assert RegionDice.is_differentiable is False
    pred, target = _random_labels(2, seed=12)
    with pytest.raises(ValueError, match="same shape"):
        RegionDice().update(pred, target[:, :-1])
    with pytest.raises(ValueError, match="same shape"):
        dice_per_case(pred[:, None], target)
    with pytest.raises(ValueError, match=r"\(B, \*S\)"):
        dice_per_case(pred[0, 0, 0], target[0, 0, 0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_file: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )
    try:
        pred, target = _random_labels(5, seed=13)
        part = slice(0, 3) if rank == 0 else slice(3, 5)  # uneven: 3 cases and 2 cases
        results = {}
        for per_case in (True, False):
            metric = RegionDice(per_case=per_case)
            metric.update(pred[part], target[part])
            results[per_case] = metric.compute()
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_region_dice_ddp_sync(tmp_path: Path):
    out_file = tmp_path / "results.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out_file)), nprocs=2, join=True)
    synced = torch.load(out_file)
    pred, target = _random_labels(5, seed=13)
    for per_case in (True, False):
        metric = RegionDice(per_case=per_case)
        metric.update(pred, target)
        for key, value in metric.compute().items():
            torch.testing.assert_close(synced[per_case][key], value)


def test_class_dice_counts_ncr_ed_et_separately():
    # NCR: 1 of 1 shared; ED: prediction {2}, reference {2, 3}; ET: prediction {3, 4}, reference {4}
    pred = torch.tensor([[0, 1, 2, 3, 3]])
    target = torch.tensor([[0, 1, 2, 2, 3]])
    torch.testing.assert_close(
        dice_per_case(pred, target, "classes"), torch.tensor([[1.0, 2 / 3, 2 / 3]], dtype=torch.float64)
    )
    metric = RegionDice(kind="classes")
    metric.update(pred, target)
    metric.update(torch.zeros_like(pred), torch.zeros_like(target))  # nothing anywhere: 1 for every class
    result = metric.compute()
    assert set(result) == {"ncr", "ed", "et", "mean"}
    assert result["ed"].item() == pytest.approx((2 / 3 + 1) / 2)
    with pytest.raises(ValueError, match="kind"):
        RegionDice(kind="voxels")

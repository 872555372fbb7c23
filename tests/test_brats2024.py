"""BraTS 2024 post-treatment labels (``labels=brats2024``): the label set, conventions, masks,
metrics, the dataset check, the evaluation, and a tiny train -> predict -> evaluate run."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from brats_fixtures import case_id, internal_label, write_case, write_nifti
from hydra import compose, initialize_config_dir
from rich.console import Console
from train_helpers import CONF

from tumorseg import labels as L
from tumorseg.data import check
from tumorseg.data.datamodule import BratsDataModule, SyntheticDataModule
from tumorseg.data.layouts import DatasetError, discover
from tumorseg.evaluate import main as evaluate_main
from tumorseg.evaluate import region_metrics
from tumorseg.inference.schemes import out_channels, targets, to_labels
from tumorseg.launch import register_resolvers
from tumorseg.predict import PredictionError
from tumorseg.predict import run as predict_run
from tumorseg.training.metrics import RegionDice, dice_per_case
from tumorseg.training.module import SegmentationModule, load_model
from tumorseg.training.train import train

register_resolvers()
SHAPE = (20, 18, 16)

# a hand-made pair of 2024 label maps (values = internal classes) and the Dice of each region,
# counted by hand: ET ref {5,6} pred {5}; NETC ref {1,2} pred {1}; SNFH ref {3,4} pred {2,3,4};
# RC ref {7,8} pred {7,9}; TC ref {1,2,5,6} pred {1,5}; WT ref {1..6} pred {1..5}
REF = np.array([0, 1, 1, 2, 2, 3, 3, 4, 4, 0], dtype=np.uint8)
PRED = np.array([0, 1, 2, 2, 2, 3, 0, 4, 0, 4], dtype=np.uint8)
DICE = {"et": 2 / 3, "netc": 2 / 3, "snfh": 4 / 5, "rc": 2 / 4, "tc": 4 / 6, "wt": 10 / 11}


# ------------------------------------------------------------------------------ the label set


def test_label_set_tables():
    b24 = L.label_set("brats2024")
    assert b24 is L.BRATS2024 and L.label_set(b24) is b24
    assert b24.classes == ("background", "netc", "snfh", "et", "rc")
    assert b24.regions == ("et", "netc", "snfh", "rc", "tc", "wt")
    expected = {"et": (3,), "netc": (1,), "snfh": (2,), "rc": (4,), "tc": (1, 3), "wt": (1, 2, 3)}
    assert {r: tuple(b24.region_classes[r]) for r in b24.regions} == expected
    assert b24.painting == (("wt", 2), ("tc", 1), ("et", 3), ("rc", 4)) and b24.channels == ("wt", "tc", "et", "rc")
    assert list(b24.conventions) == ["brats2024"] and b24.conventions["brats2024"] == {i: i for i in range(5)}
    assert sorted(b24.colours) == [1, 2, 3, 4] and b24.colours[4][0] == "RC"
    assert out_channels("regions", "brats2024") == 4 and out_channels("softmax4", "brats2024") == 5
    # BraTS 2023 stays the default, and the module constants are its tables
    b23 = L.label_set("brats2023")
    assert (L.CLASSES, L.REGIONS, L.REGION_CLASSES, L.REGION_PAINTING) == (
        b23.classes,
        b23.regions,
        b23.region_classes,
        b23.painting,
    )
    assert L.REGIONS == ("wt", "tc", "et") and L.TUMOUR_CLASSES == (1, 2, 3) and L.CONVENTIONS is b23.conventions
    assert out_channels("regions") == 3 and out_channels("softmax4") == 4
    assert "brats2024" not in L.CONVENTIONS and L.convention_label_set("brats2024") is b24
    assert L.convention_label_set("msd") is b23
    with pytest.raises(ValueError, match="brats2023, brats2024"):
        L.label_set("brats2025")


def test_conventions_round_trip_and_refuse_the_other_set():
    source = np.arange(5, dtype=np.uint8).repeat(3).reshape(5, 3)
    internal = L.to_internal(source, "brats2024")
    np.testing.assert_array_equal(internal, source)  # the internal numbering is the file numbering
    np.testing.assert_array_equal(L.from_internal(internal, "brats2024"), source)
    with pytest.raises(ValueError, match=r"label values \[4\] are not part of the brats2023"):
        L.to_internal(source, "brats2023")
    with pytest.raises(ValueError, match=r"internal labels must lie in 0\.\.3"):
        L.from_internal(internal, "brats2023")
    with pytest.raises(ValueError, match=r"label values \[5\]"):
        L.to_internal(np.array([5]), "brats2024")


# (WT, TC, ET, RC) channels of a voxel -> the class painted; the last ones are not nested
PAINTED = {
    (0, 0, 0, 0): 0,
    (1, 0, 0, 0): 2,  # SNFH
    (1, 1, 0, 0): 1,  # NETC
    (1, 1, 1, 0): 3,  # ET
    (0, 0, 0, 1): 4,  # RC
    (1, 1, 1, 1): 4,  # RC is painted last
    (0, 0, 1, 0): 3,
}


def test_paint_and_channels_round_trip():
    masks = np.array(list(PAINTED), dtype=bool).T
    np.testing.assert_array_equal(L.paint_regions(masks, label_set="brats2024"), list(PAINTED.values()))
    probs = torch.from_numpy(masks.astype(np.float32))[None]
    assert to_labels(probs, "regions", labels="brats2024")[0].tolist() == list(PAINTED.values())
    label = np.random.default_rng(0).integers(0, 5, size=(2, 6, 5, 4)).astype(np.uint8)
    channels = L.to_channels(label, axis=1, label_set="brats2024")
    assert channels.shape == (2, 4, 6, 5, 4)
    for index, classes in enumerate(((1, 2, 3), (1, 3), (3,), (4,))):
        np.testing.assert_array_equal(channels[:, index], np.isin(label, classes))
    np.testing.assert_array_equal(L.paint_regions(channels, axis=1, label_set="brats2024"), label)
    tensor = torch.from_numpy(label)
    assert torch.equal(targets(tensor, "regions", "brats2024"), torch.from_numpy(channels).float())
    # one-hot softmax probabilities of the 5 classes add up to the channel masks
    onehot = torch.nn.functional.one_hot(tensor.long(), 5).movedim(-1, 1).float()[0]
    assert torch.equal(L.region_probabilities(onehot, "softmax4", "brats2024").bool(), torch.from_numpy(channels[0]))
    with pytest.raises(ValueError, match="4 region masks"):
        L.paint_regions(channels[:, :3], axis=1, label_set="brats2024")


def test_metrics_of_a_hand_made_map():
    pred, ref = torch.from_numpy(PRED)[None], torch.from_numpy(REF)[None]
    dice = dice_per_case(pred, ref, labels="brats2024")[0]
    assert dice.tolist() == pytest.approx([DICE[r] for r in L.BRATS2024.regions])
    metric = RegionDice(labels="brats2024")
    metric.update(pred, ref)
    scores = metric.compute()
    assert list(scores) == [*L.BRATS2024.regions, "mean"]
    assert scores["mean"].item() == pytest.approx(np.mean(list(DICE.values())), abs=1e-6)
    classes = RegionDice(kind="classes", labels="brats2024")
    classes.update(pred, ref)
    assert list(classes.compute()) == ["netc", "snfh", "et", "rc", "mean"]
    volume = L.volumes_cm3(REF[:, None, None], (10.0, 10.0, 10.0), "brats2024")  # 1 cm^3 voxels
    assert volume == {"et_cm3": 2.0, "netc_cm3": 2.0, "snfh_cm3": 2.0, "rc_cm3": 2.0, "tc_cm3": 4.0, "wt_cm3": 6.0}
    metrics = region_metrics(PRED[:, None, None], REF[:, None, None], (1.0, 1.0, 1.0), L.BRATS2024.region_classes)
    assert {r: m["dice"] for r, m in metrics.items()} == pytest.approx(DICE)
    assert metrics["rc"]["ref_volume_cm3"] == pytest.approx(0.002)


# ------------------------------------------------------------------------------ data


def write_2024_case(root: Path, index: int, shape=SHAPE) -> Path:
    """A case named like BraTS 2023 with 2024 labels: the fixture's nested NETC/SNFH/ET boxes
    (2023's values are 2024's for these) and a resection cavity blob of 4 in one corner."""
    case = case_id("brats2023", index)
    folder = write_case(root, "brats2023", case, shape=shape, seed=index)
    label = internal_label(shape)
    label[3:6, 3:6, 3 + index : 6 + index] = 4
    seg = folder / f"{case}-seg.nii.gz"
    write_nifti(seg, label, nib.load(seg).affine)
    return folder


def test_check_warns_about_a_label_4_in_a_2023_named_dataset(tmp_path):
    write_2024_case(tmp_path, 1)
    write_case(tmp_path, "brats2023", case_id("brats2023", 2), shape=SHAPE)
    out = io.StringIO()
    assert check.run(tmp_path, console=Console(file=out, width=400), workers=1) == 1
    text = out.getvalue()
    warning = next(line for line in text.splitlines() if line.startswith("warning:"))
    assert "1 case(s)" in warning and "BraTS-GLI-00001-000" in warning and "[4]" in warning
    assert "data.convention=brats2024 labels=brats2024" in warning and "--convention brats2024" in warning
    # read as 2024's, the same files are fine and the values are 2024's
    report = check.check_dataset(tmp_path, convention="brats2024", workers=1, progress=False)
    assert report.ok and not report.warnings and report.label_values == [0, 1, 2, 3, 4]
    assert report.convention == "brats2024" and report.layout == "brats2023"
    # the 2024 convention is read from 2023-named files only
    other = tmp_path / "b20"
    write_case(other, "brats2020", case_id("brats2020", 1), shape=SHAPE)
    with pytest.raises(ValueError, match="named like the brats2023 layout"):
        discover(other, convention="brats2024")


def test_data_refuses_a_convention_that_does_not_fit_the_labels(tmp_path):
    write_2024_case(tmp_path / "d", 1)
    with pytest.raises(DatasetError, match="data.convention=brats2024 labels=brats2024"):
        BratsDataModule(tmp_path / "d", cache_dir=tmp_path / "c", label_set="brats2024")._build_cache(progress=False)
    with pytest.raises(ValueError, match="pass labels=brats2024"):
        BratsDataModule(tmp_path / "d", convention="brats2024")
    with pytest.raises(ValueError, match="phantoms carry BraTS 2023 classes only"):
        SyntheticDataModule(tmp_path / "s", label_set="brats2024")


@pytest.mark.parametrize("scheme,channels", [("regions", 4), ("softmax4", 5)])
def test_both_schemes_learn_the_2024_classes(scheme, channels):
    model = SegmentationModule({"name": "arunet3d", "features": [4, 8, 16]}, labels=scheme, label_set="brats2024")
    label = torch.from_numpy(np.random.default_rng(1).integers(0, 5, size=(2, 16, 16, 16)).astype(np.uint8))
    logits = model(torch.randn(2, 4, 16, 16, 16))
    assert logits.shape[1] == channels and torch.isfinite(model.loss_fn(logits, label)["loss"])
    # probabilities that are the reference (its channel masks, or its one-hot classes) give it back
    if scheme == "regions":
        probs = targets(label, scheme, "brats2024")
    else:
        probs = torch.nn.functional.one_hot(label.long(), 5).movedim(-1, 1).float()
    assert torch.equal(model._to_labels(probs), label)


def test_old_checkpoints_load_as_brats2023(tmp_path):
    model = SegmentationModule({"name": "arunet3d", "features": [4, 8, 16]})
    hparams = dict(model.hparams)
    assert hparams.pop("label_set") == "brats2023"
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams}, path)
    assert load_model(path).label_set is L.BRATS2023


# ------------------------------------------------------------------------------ evaluation


def test_evaluate_brats2024_reports_the_six_regions(tmp_path, capsys):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    for folder, label in ((pred, PRED), (ref, REF)):
        write_nifti(folder / "case1.nii.gz", label.reshape(10, 1, 1), np.eye(4))
    status = evaluate_main(["--pred", str(pred), "--ref", str(ref), "--labels", "brats2024", "--workers", "1"])
    assert status == 0
    with open(pred / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["region"] for row in rows] == ["et", "netc", "snfh", "rc", "tc", "wt"]
    assert {row["region"]: float(row["dice"]) for row in rows} == pytest.approx(DICE)
    summary = json.loads((pred / "metrics.json").read_text())["summary"]
    assert summary["rc"]["dice"]["mean"] == pytest.approx(0.5)
    assert "NETC" in capsys.readouterr().out
    # guessed from the values, the files are read as BraTS 2023's: the 4s are named
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--workers", "1"]) == 1
    errors = json.loads((pred / "metrics.json").read_text())["errors"]
    assert "--labels brats2024?" in errors["case1"]


# ------------------------------------------------------------------------------ end to end


def test_train_predict_evaluate_brats2024(tmp_path):
    data = tmp_path / "data"
    for index in (1, 2, 3):
        write_2024_case(data, index)
    overrides = [
        "labels=brats2024", "data=brats", f"data.root={data}", "data.convention=brats2024",
        f"data.cache_dir={tmp_path / 'cache'}", "data.num_folds=3", "data.patch_size=16", "data.batch_size=2",
        "data.samples_per_volume=2", "data.queue_length=4", "data.num_workers=0", "data.val_workers=0",
        "data.preprocess_workers=1", "+model.network.features=[4,8,16]", "inference.roi_size=16",
        "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        "~callbacks.progress_bar", f"paths.root_dir={tmp_path}",
    ]  # fmt: skip
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    cfg.paths.output_dir = str(tmp_path / "run")
    metrics, objects = train(cfg)
    assert {f"val/dice_{r}" for r in L.BRATS2024.regions} <= set(metrics) and "val/dice_classes_mean" in metrics
    assert "val/dice_ncr" not in metrics and "train/dice_rc" in metrics
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["label_set"] == "brats2024" and ckpt["hyper_parameters"]["labels"] == "regions"
    assert ckpt["regions"] == list(L.BRATS2024.regions)
    assert objects["model"].net.out_channels == 4
    assert (tmp_path / "run" / "loss_score.png").stat().st_size > 10_000  # drawn with the 2024 regions

    out = tmp_path / "seg"
    with initialize_config_dir(str(CONF), version_base="1.3"):
        pcfg = compose(
            "predict",
            overrides=[f"paths.root_dir={tmp_path}", "progress=false", "workers=0", f"ckpt_path={ckpt_path}",
                       f"input={data}", f"output_dir={out}", f"cases=[{case_id('brats2023', 2)}]"],
        )  # fmt: skip
        wrong = compose("predict", overrides=[*(f"{k}={pcfg[k]}" for k in ("ckpt_path", "input")), "labels=brats2023"])
    assert predict_run(pcfg) == 0
    written = nib.load(out / f"{case_id('brats2023', 2)}.nii.gz")
    assert written.shape == SHAPE and set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 3, 4}
    assert (out / f"{case_id('brats2023', 2)}.png").stat().st_size > 5_000  # drawn in the 2024 colours
    with open(out / "summary.csv") as f:
        assert next(csv.reader(f)) == ["case_id", *(f"{r}_cm3" for r in L.BRATS2024.regions)]
    # the references are read as 2024's too: the evaluation has the six regions and no failed case
    result = json.loads((out / "metrics.json").read_text())
    assert result["labels"] == "brats2024" and not result["errors"] and not result["missing"]
    assert sorted(result["summary"]) == sorted(L.BRATS2024.regions)
    with pytest.raises(PredictionError, match="written as brats2024 only"):
        predict_run(wrong)


def test_lesionwise_brats2024_scores_the_six_regions(tmp_path):
    # one 4x4x4 block per class on a 1 mm grid, 8 voxels apart; the prediction misses the cavity and
    # paints a second, far cavity: RC then has one missed lesion and one FP, the tumour regions are exact
    ref = np.zeros((40, 8, 8), dtype=np.uint8)
    for cls, start in ((1, 0), (2, 8), (3, 16), (4, 24)):
        ref[start : start + 4, 2:6, 2:6] = cls
    ref[4:8, 2:6, 2:6] = 1  # NETC touching SNFH: one WT lesion; NETC is 128 mm3, above the 50 mm3 threshold
    pred = ref.copy()
    pred[24:28] = 0
    pred[34:38, 2:6, 2:6] = 4
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    write_nifti(pred_dir / "case1.nii.gz", pred, np.eye(4))
    write_nifti(ref_dir / "case1.nii.gz", ref, np.eye(4))
    args = ["--pred", str(pred_dir), "--ref", str(ref_dir), "--labels", "brats2024", "--workers", "1"]
    assert evaluate_main([*args, "--metrics", "lesionwise"]) == 0
    with open(pred_dir / "metrics_lesionwise.csv") as f:
        rows = {row["region"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["et", "netc", "snfh", "rc", "tc", "wt"]
    for region in ("et", "netc", "snfh", "tc", "wt"):
        assert (float(rows[region]["lesion_dice"]), float(rows[region]["lesion_hd95"])) == (1.0, 0.0), region
        # TC is NETC and ET, 8 voxels apart: beyond two 3-voxel dilations, so two lesions
        tp = "2" if region == "tc" else "1"
        assert (rows[region]["num_tp"], rows[region]["num_fp"], rows[region]["num_fn"]) == (tp, "0", "0"), region
    # RC: (Dice 0 of the missed lesion + 0 for the FP) / 2, (374 + 374) / 2
    assert (float(rows["rc"]["lesion_dice"]), float(rows["rc"]["lesion_hd95"])) == (0.0, 374.0)
    assert (rows["rc"]["num_tp"], rows["rc"]["num_fp"], rows["rc"]["num_fn"]) == ("0", "1", "1")

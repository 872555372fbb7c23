"""predict.py: geometry and label conventions per layout, ensembles, outputs, failures, the real exam."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning
import nibabel as nib
import numpy as np
import pytest
import torch
from brats_fixtures import corrupt_file, file_name, shared_data, write_dataset, write_nifti
from hydra import compose, initialize_config_dir
from train_helpers import CONF, ROOT

from tumorseg.arrays import bounding_box
from tumorseg.labels import remove_small_pieces
from tumorseg.launch import register_resolvers
from tumorseg.predict import PredictionError, Predictor, dataset_cases, postprocess, run
from tumorseg.predict.cli import build_predictor
from tumorseg.training.module import SegmentationModule, load_model

register_resolvers()
SHAPE = (20, 18, 16)
# internal class -> value written, per layout
WRITTEN = {
    "brats2018": (0, 1, 2, 4),
    "brats2020": (0, 1, 2, 4),
    "brats2021": (0, 1, 2, 4),
    "brats2023": (0, 1, 2, 3),
    "msd": (0, 2, 1, 3),
}


def save_checkpoint(model: SegmentationModule, path: Path) -> Path:
    """``model`` saved as training saves it: weights and the hyper-parameters that rebuild it."""
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
            "epoch": 0,
            "global_step": 0,
        },
        path,
    )
    return path


def stand_in(
    path: Path,
    regions: tuple[float, float, float],
    modalities=("flair", "t1", "t1ce", "t2"),
    roi: int = 16,
    **inference,
) -> Path:
    """A checkpoint whose network outputs the constant region logits ``regions`` (WT, TC, ET);
    ``inference``: its test-time settings besides the window."""
    model = SegmentationModule(
        {"name": "arunet3d", "features": [4, 8, 16]},
        modalities=list(modalities),
        inference={"roi_size": roi, "sw_batch_size": 2, **inference},
    )
    head = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv3d) and m.out_channels == 3][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor(regions))
    return save_checkpoint(model, path)


# A brain box with a different margin on every side of SHAPE, filled with FLAIR levels in a random
# (so asymmetric along every axis) order: a flipped, transposed or shifted un-crop moves them.
BRAIN = (slice(1, 18), slice(3, 17), slice(2, 15))
LEVELS = np.array([100, 200, 300, 400])  # FLAIR of: healthy brain, edema, necrosis, enhancing tumour
LEVEL_CLASS = np.array([0, 2, 1, 3])  # the internal class of each level


def level_map(seed: int) -> np.ndarray:
    """Index into LEVELS of every voxel, -1 outside the brain; each level on a quarter of the brain."""
    levels = np.full(SHAPE, -1)
    size = levels[BRAIN].size
    levels[BRAIN] = np.random.default_rng(seed).permutation(np.arange(size) % 4).reshape(levels[BRAIN].shape)
    return levels


def write_pattern(data: Path, layout: str, case_id: str, seed: int) -> np.ndarray:
    """Rewrite the images of a ``write_dataset`` case: FLAIR levels of ``level_map(seed)``, the other
    modalities noise, all zero outside BRAIN. Returns the label the voxelwise stand-in must predict."""
    levels = level_map(seed)
    inside = levels >= 0
    rng = np.random.default_rng(seed)
    images = [np.where(inside, LEVELS[levels], 0)]
    images += [np.where(inside, 100 * (i + 2) + rng.integers(0, 50, SHAPE), 0) for i in range(3)]
    if layout == "msd":
        path = data / "imagesTr" / f"{case_id}.nii.gz"
        arrays = {path: np.stack(images, axis=-1).astype(np.float32)}
    else:
        arrays = {
            data / case_id / file_name(layout, case_id, m): image.astype(np.int16)
            for m, image in zip(("flair", "t1", "t1ce", "t2"), images)
        }
    for path, array in arrays.items():
        write_nifti(path, array, nib.load(path).affine)
    return np.where(inside, LEVEL_CLASS[levels], 0).astype(np.uint8)


def voxelwise_stand_in(path: Path) -> Path:
    """A checkpoint whose network thresholds the z-scored FLAIR of each voxel, alone, at the midpoints
    between the z-scores of LEVELS: its output is the LEVEL_CLASS of each voxel's level, wherever it is.

    An AR-UNet with every weight zero but the path stem -> finest skip -> last decoder shortcut ->
    head, each passing FLAIR on unchanged (batch norm in eval mode, at its initial running statistics).
    """
    model = SegmentationModule(
        {"name": "arunet3d", "features": [4, 8, 16], "norm": "batch"}, inference={"roi_size": 16, "sw_batch_size": 2}
    )
    net = model.net
    values = LEVELS[np.arange(level_map(0)[BRAIN].size) % 4].astype(np.float64)
    z = (LEVELS - values.mean()) / values.std()
    thresholds = (z[:-1] + z[1:]) / 2  # WT above healthy brain, TC above edema, ET above necrosis
    shift, gain = 5.0, 20.0  # the head's norm shifts the z-scores above 0, for its ReLU
    with torch.no_grad():
        for tensor in net.parameters():
            tensor.zero_()
        net.stem.weight[0, 0, 1, 1, 1] = 1.0  # FLAIR, the centre tap only
        net.gates[-1].psi.bias.zero_()  # attention 0.5 on the finest skip...
        net.decoder[-1].shortcut.weight[0, 0] = 2.0  # ...made up for here
        norm, conv = net.head[0], net.head[2]
        norm.weight[0], norm.bias[0] = 1.0, shift
        conv.weight[:, 0] = gain
        conv.bias.copy_(torch.from_numpy(-gain * (thresholds + shift)))
    return save_checkpoint(model, path)


def predict_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("predict", overrides=[f"paths.root_dir={tmp_path}", "progress=false", "workers=0", *overrides])
    return cfg


@pytest.mark.parametrize("layout", ["brats2018", "brats2020", "brats2021", "brats2023", "msd"])
def test_geometry_and_label_convention_of_each_layout(tmp_path, layout):
    data = tmp_path / "data"
    spacing = (1.0, 1.2, 1.5)
    ids = write_dataset(data, layout, 2, shape=SHAPE, spacing=spacing)
    expected = {case_id: write_pattern(data, layout, case_id, seed) for seed, case_id in enumerate(ids)}
    ckpt = voxelwise_stand_in(tmp_path / "voxelwise.ckpt")
    out = tmp_path / "seg"
    status = run(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={data}", f"output_dir={out}", "evaluate=false"))
    assert status == 0
    for case_id in ids:
        source = next(p for p in sorted(data.rglob(f"{case_id}*")) if p.is_file() and "seg" not in p.name)
        if layout == "msd":
            source = data / "imagesTr" / f"{case_id}.nii.gz"
        src = nib.load(source)
        seg = nib.load(out / f"{case_id}.nii.gz")
        assert seg.shape == src.shape[:3] and seg.get_data_dtype() == np.uint8
        np.testing.assert_allclose(seg.affine, src.affine)
        assert seg.header.get_zooms()[:3] == pytest.approx(src.header.get_zooms()[:3])
        # voxel for voxel the class of the FLAIR level there, in the layout's values, and 0 outside the brain
        assert set(np.unique(expected[case_id])) == {0, 1, 2, 3}
        np.testing.assert_array_equal(np.asarray(seg.dataobj), np.asarray(WRITTEN[layout])[expected[case_id]])
        assert (out / f"{case_id}.png").stat().st_size > 5_000
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == ids
    voxel_cm3 = np.prod(spacing) / 1000
    for row in rows:
        label = expected[row["case_id"]]
        for region, classes in (("wt", (1, 2, 3)), ("tc", (1, 3)), ("et", (3,))):
            assert float(row[f"{region}_cm3"]) == pytest.approx(np.isin(label, classes).sum() * voxel_cm3, rel=1e-3)


def test_ensemble_averages_probabilities_and_postprocessing(tmp_path):
    data = tmp_path / "data"
    (case_id,) = write_dataset(data, "brats2020", 1, shape=SHAPE)
    everything = stand_in(tmp_path / "a.ckpt", (10.0, 10.0, 10.0))  # ET
    whole_only = stand_in(tmp_path / "b.ckpt", (10.0, -10.0, -10.0))  # ED
    out = tmp_path / "seg"
    assert (
        run(predict_cfg(tmp_path, f"ckpt_path=[{everything},{whole_only}]", f"input={data}", f"output_dir={out}")) == 0
    )
    values = set(np.unique(np.asarray(nib.load(out / f"{case_id}.nii.gz").dataobj)))
    assert values == {2}  # TC and ET average to 0.5, not above the 0.5 threshold: edema

    out = tmp_path / "post"
    cfg = predict_cfg(tmp_path, f"ckpt_path={everything}", f"input={data}", f"output_dir={out}", "et_min_voxels=100000")
    assert run(cfg) == 0
    assert set(np.unique(np.asarray(nib.load(out / f"{case_id}.nii.gz").dataobj))) == {1}  # small ET -> NCR
    label = np.array([0, 3, 3, 2])
    assert postprocess(label, 3)[0].tolist() == [0, 1, 1, 2] and postprocess(label, 2)[0].tolist() == [0, 3, 3, 2]


def test_small_pieces_of_tumour_are_removed_by_their_share_of_the_largest(tmp_path):
    data = tmp_path / "data"
    (case_id,) = write_dataset(data, "brats2020", 1, shape=SHAPE)
    ckpt = voxelwise_stand_in(tmp_path / "voxelwise.ckpt")
    write_pattern(data, "brats2020", case_id, 0)
    flair = data / case_id / f"{case_id}_flair.nii.gz"
    image = nib.load(flair)
    values = np.asarray(image.dataobj).copy()
    values[5:8, 6:9, 5:8] = LEVELS[0]  # healthy brain around one voxel of enhancing tumour: a piece of its own
    values[6, 7, 6] = LEVELS[3]
    write_nifti(flair, values, image.affine)
    outputs = {}
    for fraction in ("0", "1"):
        out = tmp_path / f"seg{fraction}"
        cfg = predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={data}", f"output_dir={out}", "evaluate=false",
                          f"wt_min_fraction={fraction}")  # fmt: skip
        assert run(cfg) == 0
        outputs[fraction] = np.asarray(nib.load(out / f"{case_id}.nii.gz").dataobj)
    assert outputs["0"][6, 7, 6] == 4 and outputs["1"][6, 7, 6] == 0  # BraTS 2020's ET is 4
    changed = np.argwhere(outputs["0"] != outputs["1"])
    assert changed.tolist() == [[6, 7, 6]]
    assert Predictor([load_model(ckpt)]).wt_min_fraction == 0.0  # the checkpoint's: none recorded
    with pytest.raises(PredictionError, match="wt_min_fraction"):
        Predictor([load_model(ckpt)], wt_min_fraction=1.5)


def test_outputs_are_kept_unless_overwrite_and_references_are_evaluated(tmp_path):
    data = tmp_path / "data"
    ids = write_dataset(data, "brats2021", 2, shape=SHAPE)
    ckpt = stand_in(tmp_path / "m.ckpt", (10.0, 10.0, 10.0))
    out = tmp_path / "seg"
    cfg = predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={data}", f"output_dir={out}", "save_probabilities=true")
    assert run(cfg) == 0
    first = (out / f"{ids[0]}.nii.gz").stat().st_mtime_ns
    probs = nib.load(out / "probabilities" / f"{ids[0]}.nii.gz")
    assert probs.shape == (*SHAPE, 3)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["case_id"] for r in rows} == set(ids) and {r["region"] for r in rows} == {"wt", "tc", "et"}
    assert run(cfg) == 0 and (out / f"{ids[0]}.nii.gz").stat().st_mtime_ns == first
    cfg.overwrite = True
    assert run(cfg) == 0 and (out / f"{ids[0]}.nii.gz").stat().st_mtime_ns != first


def test_cases_selects_a_runs_validation_cases(tmp_path):
    data = tmp_path / "data"
    ids = write_dataset(data, "brats2021", 3, shape=SHAPE)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [ids[0]], "val": [ids[2], ids[1]]}))
    ckpt = stand_in(tmp_path / "m.ckpt", (10.0, 10.0, 10.0))
    out = tmp_path / "seg"
    assert run(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={data}", f"output_dir={out}", f"cases={split}")) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in ids[1:])
    with open(out / "metrics.csv") as f:
        assert {r["case_id"] for r in csv.DictReader(f)} == set(ids[1:])  # the unlisted case is not "missing"
    cfg = predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={data}", f"output_dir={out}", f"cases=[{ids[0]},nope]")
    with pytest.raises(PredictionError, match=r"1 case\(s\) are not in input=.*'nope'"):
        run(cfg)


def test_a_bad_case_is_reported_and_the_others_run(tmp_path):
    data = tmp_path / "data"
    ids = write_dataset(data, "brats2020", 3, shape=SHAPE)
    corrupt_file(data / ids[1] / f"{ids[1]}_t1ce.nii.gz")
    out = tmp_path / "seg"
    ckpt = stand_in(tmp_path / "m.ckpt", (10.0, 10.0, 10.0))
    assert run(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={data}", f"output_dir={out}", "evaluate=false")) == 1
    assert (out / f"{ids[0]}.nii.gz").exists() and (out / f"{ids[2]}.nii.gz").exists()
    assert not (out / f"{ids[1]}.nii.gz").exists()


def test_explicit_files_and_their_errors(tmp_path):
    data = tmp_path / "data"
    (case_id,) = write_dataset(data, "brats2020", 1, shape=SHAPE)
    files = {m: data / case_id / f"{case_id}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")}
    ckpt = stand_in(tmp_path / "m.ckpt", (10.0, 10.0, 10.0))
    out = tmp_path / "seg"
    given = [f"files.{m}={p}" for m, p in files.items()]
    assert run(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"output_dir={out}", *given)) == 0
    seg = nib.load(out / f"{case_id}.nii.gz")  # the case id comes from the FLAIR file's name
    assert set(np.unique(np.asarray(seg.dataobj))) == {4}

    with pytest.raises(PredictionError, match="files.t1ce is missing"):
        run(predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"output_dir={out}", *given[:2], given[3]))
    flair_only = stand_in(tmp_path / "flair.ckpt", (10.0, 10.0, 10.0), modalities=("flair",))
    out2 = tmp_path / "seg2"
    assert run(predict_cfg(tmp_path, f"ckpt_path={flair_only}", f"output_dir={out2}", given[0])) == 0
    with pytest.raises(PredictionError, match=r"trained on \['flair'\]; files.flair is missing"):
        run(predict_cfg(tmp_path, f"ckpt_path={flair_only}", f"output_dir={out2}", given[1]))


def test_checkpoint_errors(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, "brats2020", 1, shape=SHAPE)
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        run(predict_cfg(tmp_path, f"ckpt_path={tmp_path / 'nothing.ckpt'}", f"input={data}"))
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(stand_in(tmp_path / "m.ckpt", (0.0, 0.0, 0.0)).read_bytes()[:500])
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        run(predict_cfg(tmp_path, f"ckpt_path={broken}", f"input={data}"))
    with pytest.raises(ValueError, match="0" * 64):
        run(predict_cfg(tmp_path, f"ckpt_path={tmp_path / 'm.ckpt'}", f"ckpt_sha256={'0' * 64}", f"input={data}"))


def test_command_line_exit_status(tmp_path, hydra_script):
    data = tmp_path / "data"
    ids = write_dataset(data, "brats2023", 2, shape=SHAPE)
    ckpt = stand_in(tmp_path / "m.ckpt", (10.0, -10.0, -10.0))
    args = [f"paths.root_dir={tmp_path}", "progress=false", f"ckpt_path={ckpt}", f"input={data}"]
    status, out, err = hydra_script("predict.py", *args, f"output_dir={tmp_path / 'seg'}")
    assert status == 0, err[-2000:]
    assert "2 written, 0 kept, 0 skipped, 0 failed" in out

    # a case without its T1ce is skipped: the others are segmented, and the exit status says so
    next((data / ids[1]).glob("*-t1c.nii.gz")).unlink()
    status, out, err = hydra_script("predict.py", *args, f"output_dir={tmp_path / 'seg2'}")
    assert status == 1, err[-2000:]
    assert "1 written, 0 kept, 1 skipped, 0 failed" in out
    assert f"SKIPPED {ids[1]}: " in out and "Traceback" not in err

    # the same endings from a real process: nothing can start
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    env.pop("HYDRA_FULL_ERROR", None)
    command = [sys.executable, str(ROOT / "predict.py"), f"paths.root_dir={tmp_path}", "progress=false",
               f"ckpt_path={tmp_path / 'missing.ckpt'}", f"input={data}"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "missing.ckpt" in done.stderr and "Traceback" not in done.stderr and "Error executing job" not in done.stderr


def test_the_shared_exam(tmp_path_factory, tmp_path):
    shared = shared_data(tmp_path_factory.mktemp("shared"))
    ckpt = stand_in(tmp_path / "m.ckpt", (10.0, 10.0, 10.0))
    out = tmp_path / "seg"
    cfg = predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={shared.exam_2023}", f"output_dir={out}", "overlap=0.1")
    assert run(cfg) == 0
    src = nib.load(shared.exam_2023 / "BraTS-GLI-00001-000-t2f.nii.gz")
    seg = nib.load(out / "BraTS-GLI-00001-000.nii.gz")
    assert seg.shape == src.shape == shared.shape
    np.testing.assert_allclose(seg.affine, src.affine)
    values = np.asarray(seg.dataobj)
    assert set(np.unique(values)) == {0, 3}  # ET inside the brain, in 2023 values
    images = [np.asarray(nib.load(p).dataobj) for p in sorted(shared.exam_2023.glob("*.nii.gz"))]
    outside = np.ones(values.shape, bool)
    outside[bounding_box(np.any(np.stack(images) != 0, axis=0))] = False
    assert values[~outside].all() and not values[outside].any()  # ET over the brain's box, 0 outside
    assert (out / "BraTS-GLI-00001-000.png").stat().st_size > 10_000


# ------------------------------------------------------------------------------------ test-time settings


def test_predict_keeps_each_checkpoints_settings_unless_told_otherwise(tmp_path):
    """predict.yaml's null options keep the checkpoint's overlap, mirroring and ET relabelling."""
    ckpt = stand_in(tmp_path / "m.ckpt", (10.0, 10.0, 10.0), overlap=0.25, mirror=True, et_min_voxels=7)
    predictor = build_predictor(predict_cfg(tmp_path, f"ckpt_path={ckpt}"))
    (config,) = predictor.configs
    assert (config.overlap, config.mirror, config.sw_batch_size, config.roi_size) == (0.25, True, 2, (16, 16, 16))
    assert predictor.et_min_voxels == 7

    overrides = ["overlap=0.5", "mirror=false", "sw_batch_size=3", "et_min_voxels=0"]
    predictor = build_predictor(predict_cfg(tmp_path, f"ckpt_path={ckpt}", *overrides))
    (config,) = predictor.configs
    assert (config.overlap, config.mirror, config.sw_batch_size, config.roi_size) == (0.5, False, 3, (16, 16, 16))
    assert predictor.et_min_voxels == 0


def test_a_model_and_its_checkpoint_predict_alike(tmp_path):
    torch.manual_seed(0)
    model = SegmentationModule(
        {"name": "arunet3d", "features": [4, 8, 16]},
        inference={"roi_size": 16, "overlap": 0.25, "mirror": True, "et_min_voxels": 5},
    )
    trainer = lightning.pytorch.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.strategy.connect(model)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    data = tmp_path / "data"
    write_dataset(data, "brats2021", 1, shape=SHAPE)
    (case,) = dataset_cases(data)

    from_file = Predictor.from_checkpoints([path], progress=False, device="cpu")
    in_memory = Predictor(model, device="cpu")
    assert from_file.configs == in_memory.configs and in_memory.configs[0].mirror
    assert from_file.et_min_voxels == in_memory.et_min_voxels == 5
    expected, got = in_memory(case), from_file(case)
    assert got.label.shape == SHAPE and got.label.dtype == np.uint8
    np.testing.assert_array_equal(got.label, expected.label)
    torch.testing.assert_close(got.probabilities, expected.probabilities, rtol=0, atol=0)


def test_an_ensemble_needs_one_et_threshold(tmp_path):
    a = stand_in(tmp_path / "a.ckpt", (10.0, 10.0, 10.0), et_min_voxels=0)
    b = stand_in(tmp_path / "b.ckpt", (10.0, 10.0, 10.0), et_min_voxels=500, mirror=True)
    with pytest.raises(PredictionError, match=r"differ in inference.et_min_voxels \(\[0, 500\]\); give et_min_voxels"):
        build_predictor(predict_cfg(tmp_path, f"ckpt_path=[{a},{b}]"))
    predictor = build_predictor(predict_cfg(tmp_path, f"ckpt_path=[{a},{b}]", "et_min_voxels=100"))
    assert predictor.et_min_voxels == 100
    assert [c.mirror for c in predictor.configs] == [False, True]  # each model its own mirroring


def test_validation_post_processes_as_prediction_does_counting_source_voxels():
    model = SegmentationModule(
        {"name": "arunet3d", "features": [4, 8, 16]},
        inference={"roi_size": 16, "et_min_voxels": 8, "wt_min_fraction": 0.5},
    )
    labels = torch.zeros((2, 12, 12, 12), dtype=torch.long)
    labels[:, 1:7, 1:7, 1:7] = 2  # the largest piece
    labels[:, 2:4, 2:4, 2] = 3  # 4 voxels of ET inside it
    labels[:, 10, 10, 10] = 1  # a far piece of 1 voxel
    # case 0 at the source's grid: 4 ET voxels < 8 become NCR; case 1 resampled from 4 source
    # voxels per voxel: its 4 voxels of ET are 16 source voxels, kept
    out = model.postprocess(labels, torch.tensor([1.0, 4.0]))
    for case, source_voxels in ((0, 1), (1, 4)):
        expected, _ = remove_small_pieces(labels[case].numpy(), 0.5)
        expected, _ = postprocess(expected, -(-8 // source_voxels))
        assert np.array_equal(out[case].numpy(), expected)
    assert int((out[0] == 3).sum()) == 0 and int((out[1] == 3).sum()) == 4 and int(out[:, 10, 10, 10].sum()) == 0
    model.hparams.inference.update(et_min_voxels=0, wt_min_fraction=0.0)
    assert model.postprocess(labels) is labels  # nothing to do: the labels as they are

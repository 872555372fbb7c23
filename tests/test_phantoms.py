"""Synthetic phantoms: file layout, determinism, anatomy, tumour contrasts, the CLI and crash safety."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
from filelock import FileLock
from scipy import ndimage

from tumorseg.phantoms import generator
from tumorseg.phantoms.dataset import LOCK, MANIFEST, generate_dataset
from tumorseg.phantoms.dataset import main as phantoms_main
from tumorseg.phantoms.generator import DEFAULT_SHAPE, make_phantom

SMALL = (48, 48, 32)
FILES = ("flair", "t1", "t1ce", "t2", "seg")
MODALITIES = FILES[:4]


def nifti_bytes(out: Path) -> dict[str, bytes]:
    """Every .nii.gz under ``out`` by relative path, with its bytes."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.nii.gz"))}


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """``python -m tumorseg.phantoms ARGS`` in this process: its exit status and stderr."""
    capsys.readouterr()
    status = phantoms_main(list(args))
    return status, capsys.readouterr().err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two small cases, seed 7: the reference the other tests compare with or copy."""
    out = tmp_path_factory.mktemp("synthetic") / "brats"
    generate_dataset(out, cases=2, seed=7, shape=SMALL, progress=False)
    return out


@pytest.fixture(scope="module")
def phantoms() -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Six cases at 64x64x48: enough tumour voxels for stable class means."""
    return [make_phantom(np.random.default_rng([0, i]), (64, 64, 48)) for i in range(1, 7)]


def test_layout_types_and_header(dataset):
    assert sorted(p.name for p in dataset.iterdir()) == [LOCK, "BraTS20_Training_001", "BraTS20_Training_002", MANIFEST]
    for case in ("BraTS20_Training_001", "BraTS20_Training_002"):
        assert sorted(p.name for p in (dataset / case).iterdir()) == sorted(f"{case}_{f}.nii.gz" for f in FILES)
        for name in FILES:
            path = dataset / case / f"{case}_{name}.nii.gz"
            image = nib.load(path)
            assert image.shape == SMALL
            assert image.get_data_dtype() == (np.uint8 if name == "seg" else np.int16)
            assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
            np.testing.assert_allclose(image.header.get_zooms(), generator.phantom_spacing(SMALL), rtol=1e-6)
            assert image.header.get_xyzt_units()[0] == "mm"
            header = path.read_bytes()[:10]
            assert header[4:8] == b"\0\0\0\0", "gzip mtime must be 0"
            assert not header[3] & 0x08, "gzip header must not name a file"
        label = np.asarray(nib.load(dataset / case / f"{case}_seg.nii.gz").dataobj)
        assert set(np.unique(label)) <= {0, 1, 2, 4} and (label > 0).any()


@pytest.fixture(scope="module")
def full() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One case at BraTS's 1 mm grid."""
    return make_phantom(np.random.default_rng([0, 1]))


def test_default_shape_geometry(full):
    images, label = full
    brain = images["t1"] > 0
    assert brain.shape == label.shape == DEFAULT_SHAPE
    # A brain of 1.2-1.9 litres, like BraTS's, that touches no edge: its bottom is a flat cut
    # through the brainstem a few mm above the first slice, as BraTS's masks end.
    assert 1.2e6 < brain.sum() < 1.9e6
    for axis in range(3):
        assert not np.take(brain, [0, -1], axis=axis).any()
    area = brain.sum(axis=(0, 1))
    bottom = int(np.flatnonzero(area)[0])
    assert 3 <= bottom <= 25
    # brainstem and cerebellum: the lowest centimetre is narrower than the cerebrum
    assert area[bottom : bottom + 10].max() < 0.7 * area.max()
    assert nib.aff2axcodes(generator.brats_affine(DEFAULT_SHAPE)) == ("L", "P", "S")
    np.testing.assert_allclose(np.abs(np.diag(generator.brats_affine((96, 96, 64)))[:3]), [2.5, 2.5, 155 / 64])


def test_ventricles_and_enhancing_healthy_structures(full):
    images, label = full
    brain = images["t1"] > 0
    t2, flair, t1ce = (images[m] / images[m][brain].mean() for m in ("t2", "flair", "t1ce"))
    # the ventricles: large T2-bright, FLAIR-dark spaces deep in the brain
    csf = brain & (t2 > 1.6) & (flair < 0.8) & (label == 0)  # relative: the scans have an offset
    parts, count = ndimage.label(csf)
    sizes = ndimage.sum(csf, parts, range(1, count + 1))
    biggest = parts == 1 + int(np.argmax(sizes))
    assert sizes.max() > 5000  # mm3
    centre = tuple(np.round(np.argwhere(biggest).mean(axis=0)).astype(int))
    assert ndimage.distance_transform_edt(brain)[centre] > 25  # mm from the brain's surface
    # Vessels and choroid plexus enhance as much as tumour does, away from any tumour.
    et_level = np.median(t1ce[label == 4])
    far = ndimage.distance_transform_edt(label == 0) > 10
    assert np.count_nonzero(brain & far & (t1ce > 0.8 * et_level)) > 50


def test_mass_effect_keeps_volume():
    focus = generator._Focus(np.zeros(3, np.float32), radius=12.0, push=8.0)
    r = np.array([1.0, 7.9, 8.5, 12.0, 20.0, 60.0])
    points = np.stack([r, np.zeros_like(r), np.zeros_like(r)]).reshape(3, -1, 1, 1)
    r0 = np.linalg.norm(generator._displace(points, [focus]), axis=0).ravel()
    # tissue now at distance r came from r0 = (r^3 - a^3)^(1/3): the shell between them keeps its volume
    np.testing.assert_allclose(r0, np.cbrt(np.maximum(r**3 - 8.0**3, 0)), atol=1e-4)
    assert r[-1] - r0[-1] < 8.0**3 / (3 * 60.0**2) + 1e-3  # far away, the push fades as 1/r^2


CORE = (generator.NCR, generator.NET, generator.ET, generator.BLOOD)


def test_edema_spreads_along_white_matter_and_spares_csf():
    shape = (64, 64, 64)
    frame = generator._Frame.centred(shape, (1.5, 1.5, 1.5))
    x = np.broadcast_to(frame.axes[0], shape)
    maps = {"brain": np.ones(shape, np.float32), "wm": (x < 0).astype(np.float32), "csf": np.zeros(shape, np.float32)}
    maps["csf"][:, :, :6] = 1  # a CSF slab the edema must not enter
    reach = {"wm": [], "gm": []}
    for seed in range(4):
        focus = generator._Focus(np.zeros(3, np.float32), radius=8.0, push=4.0)
        classes, _ = generator._paint_tumours(np.random.default_rng(seed), frame, [focus], maps)
        edema = classes == generator.ED
        assert edema.any() and not edema[:, :, :6].any()
        from_core = ndimage.distance_transform_edt(~np.isin(classes, CORE), sampling=frame.spacing)
        reach["wm"].append(from_core[edema & (x < 0)].max())
        reach["gm"].append(from_core[edema & (x > 0)].max())
    # further beyond the core along white matter (x < 0) than into grey matter (x > 0), every time
    assert all(w > 1.5 * g for w, g in zip(reach["wm"], reach["gm"])), reach


def test_gliomas_vary_like_real_ones():
    kinds = {"no_et": 0, "multifocal": 0, "rim_gap": 0}
    for i in range(30):
        _, label = make_phantom(np.random.default_rng([2, i]), (64, 64, 48))
        core = np.isin(label, (1, 4))
        kinds["no_et"] += not (label == 4).any()
        kinds["multifocal"] += ndimage.label(label > 0)[1] > 1
        # a gap in the rim: non-enhancing core touching edema or brain where the rim should be
        outer = core & ~ndimage.binary_erosion(core)
        kinds["rim_gap"] += (label == 4).any() and (label[outer] == 1).mean() > 0.1
    assert kinds["no_et"] >= 2 and kinds["multifocal"] >= 2 and kinds["rim_gap"] >= 5, kinds


def test_same_seed_same_bytes_whatever_workers_or_cases(dataset, tmp_path):
    generate_dataset(tmp_path / "again", cases=2, seed=7, shape=SMALL, progress=False)
    assert nifti_bytes(tmp_path / "again") == nifti_bytes(dataset)
    assert (tmp_path / "again" / MANIFEST).read_bytes() == (dataset / MANIFEST).read_bytes()

    generate_dataset(tmp_path / "parallel", cases=3, seed=7, shape=SMALL, workers=2, progress=False)
    parallel = nifti_bytes(tmp_path / "parallel")
    assert {k: v for k, v in parallel.items() if "_003" not in k} == nifti_bytes(dataset)

    generate_dataset(tmp_path / "other", cases=2, seed=8, shape=SMALL, progress=False)
    other = nifti_bytes(tmp_path / "other")
    assert other.keys() == parallel.keys() - {k for k in parallel if "_003" in k}
    assert all(other[k] != parallel[k] for k in other)


def test_background_is_exactly_zero_outside_one_brain():
    for i in range(4):
        images, label = make_phantom(np.random.default_rng([1, i]), SMALL)
        brain = images["flair"] != 0
        for name in MODALITIES:
            assert images[name].dtype == np.int16
            np.testing.assert_array_equal(images[name] != 0, brain, err_msg=f"{name} differs from the brain mask")
            assert images[name].min() >= 0
        assert not label[~brain].any(), "tumour outside the brain"
        assert ndimage.label(brain)[1] == 1
        assert 0.1 < brain.mean() < 0.3  # 1.2-1.9 litres of 8.9
        assert label.dtype == np.uint8 and (label > 0).any()


def class_means(phantoms) -> dict[tuple[str, str], float]:
    """Mean of each modality over each class, pooled over cases, after dividing by the case's brain mean."""
    pooled: dict[tuple[str, str], list[np.ndarray]] = {}
    for images, label in phantoms:
        brain = images["t1"] > 0
        regions = {"normal": brain & (label == 0), "ncr": label == 1, "ed": label == 2, "et": label == 4}
        for name in MODALITIES:
            normalised = images[name] / images[name][brain].mean()
            for region, mask in regions.items():
                pooled.setdefault((name, region), []).append(normalised[mask])
    return {key: float(np.concatenate(parts).mean()) for key, parts in pooled.items()}


def test_each_tumour_class_needs_its_modality(phantoms):
    mean = class_means(phantoms)
    # Edema: bright on FLAIR and T2, not on T1 or T1ce.
    assert mean["flair", "ed"] > 1.3 * mean["flair", "normal"]
    assert mean["t2", "ed"] > 1.2 * mean["t2", "normal"]
    assert mean["t1", "ed"] < mean["t1", "normal"]
    assert mean["t1ce", "ed"] < mean["t1ce", "normal"]
    # Enhancing tumour: bright on T1ce only, where edema and necrosis are not.
    assert mean["t1ce", "et"] > 1.3 * mean["t1ce", "ed"]
    assert mean["t1ce", "et"] > 1.3 * mean["t1ce", "normal"]
    assert mean["t1", "et"] < mean["t1", "normal"]
    assert mean["flair", "et"] < mean["flair", "ed"]
    # Necrosis: darker than the rim on T1ce, bright on T2.
    assert mean["t1ce", "ncr"] < 0.8 * mean["t1ce", "et"]
    assert mean["t2", "ncr"] > 1.3 * mean["t2", "normal"]


def test_healthy_tissue_contrasts(phantoms):
    for images, label in phantoms:
        normal = (images["t1"] > 0) & (label == 0)
        t1, t2, flair = (images[name][normal].astype(float) for name in ("t1", "t2", "flair"))
        # T1 and T2 order WM, GM and CSF oppositely; the brightest T2 voxels (CSF) are dark on FLAIR.
        assert np.corrcoef(t1, t2)[0, 1] < -0.3
        csf = t2 > np.percentile(t2, 97)
        assert flair[csf].mean() < 0.8 * flair.mean()


def test_intensity_scale_differs_between_cases(phantoms):
    for name in MODALITIES:
        means = [images[name][images[name] > 0].mean() for images, _ in phantoms]
        assert max(means) > 2 * min(means), name


def test_some_cases_have_tiny_or_no_enhancing_tumour():
    ratios = []
    for i in range(40):
        _, label = make_phantom(np.random.default_rng([0, i]), (32, 32, 24))
        ratios.append((label == 4).sum() / max(np.isin(label, (1, 4)).sum(), 1))
    low = sum(r < 0.1 for r in ratios)
    assert 1 <= low <= 14, ratios


def test_cli_writes_cases_and_previews(tmp_path, capsys):
    out = tmp_path / "data"
    status, err = run_cli(capsys, str(out), "--cases", "2", "--seed", "3", "--shape", *map(str, SMALL), "--preview")
    assert status == 0, err
    expected = ["BraTS20_Training_001", "BraTS20_Training_002", MANIFEST, LOCK, "previews"]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert len(list(out.glob("BraTS20_Training_00?/*.nii.gz"))) == 10
    for case in ("BraTS20_Training_001", "BraTS20_Training_002"):
        png = out / "previews" / f"{case}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(png).ndim == 3


def test_cli_refuses_a_folder_with_other_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    status, err = run_cli(capsys, str(out), "--cases", "1", "--shape", *map(str, SMALL))
    assert status != 0
    assert "not empty" in err and "notes.txt" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_folder_written_under_the_generators_former_name_is_reused(dataset, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(dataset, old)
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["generator"] = "tumorseg.data.synthetic"  # as written before the phantoms were a package
    (old / MANIFEST).write_text(json.dumps(manifest))
    generate_dataset(old, cases=2, seed=7, shape=SMALL, progress=False)
    assert nifti_bytes(old) == nifti_bytes(dataset)
    manifest["generator"] = "someone.else"
    (old / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FileExistsError, match="written by 'someone.else'"):
        generate_dataset(old, cases=2, seed=7, shape=SMALL, progress=False)


def test_refuses_other_settings_and_foreign_cases(dataset, tmp_path):
    with pytest.raises(FileExistsError, match="seed"):
        generate_dataset(dataset, cases=2, seed=8, shape=SMALL, progress=False)
    with pytest.raises(FileExistsError, match="shape"):
        generate_dataset(dataset, cases=2, seed=7, shape=(48, 48, 40), progress=False)
    copy = shutil.copytree(dataset, tmp_path / "copy")
    (copy / "BraTS20_Training_003").mkdir()
    with pytest.raises(FileExistsError, match="BraTS20_Training_003"):
        generate_dataset(copy, cases=3, seed=7, shape=SMALL, progress=False)
    for bad in ({"cases": 0}, {"seed": -1}, {"workers": 0}, {"shape": (48, 48, 8)}):
        with pytest.raises(ValueError, match=f"^{next(iter(bad))} must be"):
            generate_dataset(tmp_path / "bad", **{"cases": 1, "shape": SMALL, **bad})


def test_killed_run_is_repaired(dataset, tmp_path, monkeypatch):
    out = tmp_path / "crash"
    replace = os.replace
    calls = []

    def crash_on_third_rename(src, dst):  # the manifest, case 1 FLAIR, then case 1 T1: killed
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_third_rename)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(out, cases=2, seed=7, shape=SMALL, progress=False)
    monkeypatch.undo()
    case = out / "BraTS20_Training_001"
    assert [p.name for p in case.iterdir()] == ["BraTS20_Training_001_flair.nii.gz"]
    assert nib.load(case / "BraTS20_Training_001_flair.nii.gz").get_fdata().any(), "a finished name holds a whole file"
    assert json.loads((out / MANIFEST).read_text())["complete"] == {}

    # A SIGKILL leaves its temporary file behind; it is never taken for a case file.
    (case / ".BraTS20_Training_001_t1.nii.gz.k2x9.partial.nii.gz").write_bytes(b"half a file")
    generate_dataset(out, cases=2, seed=7, shape=SMALL, progress=False)
    assert nifti_bytes(out) == nifti_bytes(dataset)
    assert not list(out.rglob("*.partial*"))


def test_a_second_generator_waits_for_the_first(dataset, tmp_path):
    """The nodes of a launch sharing a file system each start a generator in the same folder: one
    at a time, so none removes another's temporary files as a killed run's."""
    out = tmp_path / "shared"
    out.mkdir()
    first = FileLock(out / LOCK)  # another node's generator, busy
    first.acquire()
    second = threading.Thread(
        target=generate_dataset, args=(out,), kwargs={"cases": 2, "seed": 7, "shape": SMALL, "progress": False}
    )
    second.start()
    second.join(timeout=1.0)
    assert second.is_alive() and not (out / MANIFEST).exists(), "the second generator did not wait"
    first.release()
    second.join(timeout=60)
    assert not second.is_alive()
    assert nifti_bytes(out) == nifti_bytes(dataset)


def test_rerun_skips_complete_cases_and_rewrites_damaged_ones(dataset, tmp_path):
    out = shutil.copytree(dataset, tmp_path / "copy")
    intact = out / "BraTS20_Training_001" / "BraTS20_Training_001_t2.nii.gz"
    damaged = out / "BraTS20_Training_002" / "BraTS20_Training_002_t2.nii.gz"
    os.utime(intact, ns=(0, 0))
    damaged.write_bytes(damaged.read_bytes()[:1000])  # truncated, yet named like a finished file
    generate_dataset(out, cases=2, seed=7, shape=SMALL, progress=False)
    assert intact.stat().st_mtime_ns == 0, "a complete case was regenerated"
    assert nifti_bytes(out) == nifti_bytes(dataset)

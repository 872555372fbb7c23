"""The preprocessing cache: crop, normalisation, exact inversion, reuse, invalidation, crash safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from brats_fixtures import SharedData, file_states, shared_data, write_case, write_dataset
from faults import sigkill_at

from tumorseg.data import cache as cache_module
from tumorseg.data.cache import PreprocessConfig, brain_bbox, build_cache, read_entry, restore_geometry
from tumorseg.data.layouts import discover
from tumorseg.data.reading import load_case
from tumorseg.phantoms import generate_dataset


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    generate_dataset(root, 3, seed=0, shape=(48, 40, 32), progress=False)  # every tumour class in each
    return root


def test_crop_normalise_and_exact_inverse(phantoms, tmp_path):
    discovery = discover(phantoms, require_labels=True)
    assert_tumour_of_every_class(load_case(case).label for case in discovery.cases)
    before = file_states(phantoms)
    cache = build_cache(discovery, tmp_path, progress=False)
    assert (cache.built, cache.reused, cache.problems) == (3, 0, [])
    for case, entry in zip(discovery.cases, cache.entries):
        volume = load_case(case)
        image, label = entry.load()
        start, stop = brain_bbox(volume.image)
        assert image.dtype == np.float16 and label.dtype == np.uint8
        assert image.shape[1:] == tuple(b - a for a, b in zip(start, stop)) == entry.shape
        assert image.shape[1:] < volume.image.shape[1:]  # the zero background was cropped away
        # z-scores over brain voxels, background exactly 0
        brain = np.any(image != 0, axis=0)
        for channel, stats in zip(image.astype(np.float64), entry.meta["normalisation"]):
            assert abs(channel[brain].mean()) < 1e-2 and abs(channel[brain].std() - 1) < 1e-2
            assert not channel[~brain].any()
            assert stats["std"] > 0
        # the crop is undone exactly: labels, and images up to float16 rounding
        np.testing.assert_array_equal(restore_geometry(label, entry.meta, label=True), volume.label)
        restored = restore_geometry(image.astype(np.float32), entry.meta, label=False)
        means = np.array([s["mean"] for s in entry.meta["normalisation"]])[:, None, None, None]
        stds = np.array([s["std"] for s in entry.meta["normalisation"]])[:, None, None, None]
        inside = np.any(volume.image != 0, axis=0)
        np.testing.assert_allclose((restored * stds + means)[:, inside], volume.image[:, inside], rtol=2e-3, atol=0.5)
        # tumour coordinates for the sampler point at tumour voxels
        fg = np.load(entry.foreground_path)
        assert len(fg) and (label[tuple(fg.T)] > 0).all()
    assert file_states(phantoms) == before  # sources untouched


def test_reused_across_builds_and_rebuilt_when_a_source_or_the_settings_change(phantoms, tmp_path):
    discovery = discover(phantoms, require_labels=True)
    first = build_cache(discovery, tmp_path, progress=False)
    times = {e.case_id: (e.path / "meta.json").stat().st_mtime_ns for e in first.entries}
    again = build_cache(discovery, tmp_path, progress=False)
    assert (again.built, again.reused) == (0, 3)
    assert {e.case_id: (e.path / "meta.json").stat().st_mtime_ns for e in again.entries} == times

    # a changed source file rebuilds that case only
    copy = tmp_path / "copy"
    generate_dataset(copy, 2, seed=3, shape=(48, 40, 32), progress=False)
    cache_dir = tmp_path / "cache-copy"
    before = build_cache(discover(copy), cache_dir, progress=False).entries[1].meta
    flair = next((copy / "BraTS20_Training_002").glob("*_flair.nii.gz"))
    img = nib.load(flair)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2, img.affine, img.header), flair)
    rebuilt = build_cache(discover(copy), cache_dir, progress=False)
    assert (rebuilt.built, rebuilt.reused) == (1, 1)
    after = rebuilt.entries[1].meta
    assert after["fingerprint"] != before["fingerprint"]
    assert after["normalisation"][0]["mean"] == pytest.approx(2 * before["normalisation"][0]["mean"])

    # other settings live under another key
    other = build_cache(discovery, tmp_path, PreprocessConfig(margin=2), progress=False)
    assert other.built == 3 and other.root != first.root
    assert all(o.shape[0] >= f.shape[0] for o, f in zip(other.entries, first.entries))


def test_a_killed_build_is_never_trusted(phantoms, tmp_path, monkeypatch):
    discovery = discover(phantoms, require_labels=True)
    case = discovery.cases[0]
    real_save = np.save

    def save_then_die(path, array):
        real_save(path, array)
        if "label.npy" in Path(path).name:  # the temporary file of label.npy
            raise KeyboardInterrupt  # as a kill between two files

    monkeypatch.setattr(cache_module.np, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_cache(discovery, tmp_path, progress=False)
    monkeypatch.undo()
    settings_dir = tmp_path / PreprocessConfig().key
    assert read_entry(settings_dir, case) is None
    assert not (settings_dir / case.case_id).exists()

    # an entry folder without meta.json (a crash of an older writer) is not trusted either
    (settings_dir / case.case_id).mkdir()
    np.save(settings_dir / case.case_id / "image.npy", np.zeros((4, 2, 2, 2), np.float16))
    assert read_entry(settings_dir, case) is None
    cache = build_cache(discovery, tmp_path, progress=False)
    assert cache.built == 3 and not cache.problems
    assert json.loads((settings_dir / case.case_id / "meta.json").read_text())["case_id"] == case.case_id


STALLED_BUILD = """
import sys, time
import numpy as np
from tumorseg.data import cache
from tumorseg.data.layouts import discover

real_save = np.save
saved = []


def save(path, array):  # stalls in the second case's label, its image already on disk, to be killed there
    real_save(path, array)
    saved.append(path)
    if len(saved) == 5:
        print("mid-build", flush=True)
        time.sleep(600)


cache.np.save = save
cache.build_cache(discover(sys.argv[1]), sys.argv[2], progress=False)
"""


def entry_files(cache) -> dict[str, bytes]:
    return {f"{e.case_id}/{p.name}": p.read_bytes() for e in cache.entries for p in sorted(e.path.iterdir())}


def test_sigkill_during_the_build_then_a_rebuild_equals_an_uninterrupted_build(phantoms, tmp_path):
    killed_dir = tmp_path / "killed"
    sigkill_at(STALLED_BUILD, "mid-build", str(phantoms), str(killed_dir))
    settings_dir = killed_dir / PreprocessConfig().key
    discovery = discover(phantoms, require_labels=True)
    first, second, third = discovery.cases
    assert read_entry(settings_dir, first) is not None  # finished before the kill
    assert read_entry(settings_dir, second) is None and not (settings_dir / second.case_id).exists()
    assert [p.name for p in settings_dir.iterdir() if p.name.startswith(f".{second.case_id}.tmp-")]  # its half

    rebuilt = build_cache(discovery, killed_dir, progress=False)
    assert (rebuilt.built, rebuilt.reused, rebuilt.problems) == (2, 1, [])
    assert not [p.name for p in settings_dir.iterdir() if p.name.startswith(".")]  # the killed half is freed
    whole = build_cache(discovery, tmp_path / "whole", progress=False)
    assert (
        [e.case_id for e in rebuilt.entries]
        == [e.case_id for e in whole.entries]
        == [c.case_id for c in discovery.cases]
    )
    assert entry_files(rebuilt) == entry_files(whole)  # arrays and meta.json, byte for byte


def _build(root: str, cache_dir: str) -> list[str]:
    return [e.case_id for e in build_cache(discover(root), cache_dir, progress=False).entries]


def test_concurrent_builders_agree(phantoms, tmp_path):
    """Two processes (say two nodes of one job) building the same cache at once both succeed."""
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(_build, [str(phantoms)] * 2, [str(tmp_path)] * 2))
    assert results[0] == results[1] and len(results[0]) == 3
    assert not [p for p in (tmp_path / PreprocessConfig().key).iterdir() if p.name.startswith(".")]
    assert build_cache(discover(phantoms), tmp_path, progress=False).built == 0


def nearest(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of ``n_out`` voxels resampled from ``n_in`` by nearest neighbour along one
    axis (torch's "nearest-exact": the voxel whose extent holds the new voxel's centre)."""
    index = torch.arange(n_in, dtype=torch.float32)[None, None, :, None, None]
    return F.interpolate(index, size=(n_out, 1, 1), mode="nearest-exact")[0, 0, :, 0, 0].long().numpy()


def assert_tumour_of_every_class(labels) -> None:
    for label in labels:
        assert set(np.unique(label)) == {0, 1, 2, 3}, "the phantom lacks a tumour class: the test could not fail"


def test_resampling_is_inverted_to_the_source_grid(phantoms, tmp_path):
    discovery = discover(phantoms, require_labels=True)
    originals = [load_case(case).label for case in discovery.cases]
    assert_tumour_of_every_class(originals)
    source = np.array(load_case(discovery.cases[0]).spacing)  # the phantoms' voxel size
    # a finer grid (non-integer ratios too) loses nothing: the label comes back voxel for voxel
    fine = build_cache(discovery, tmp_path, PreprocessConfig(spacing=tuple(source * (0.6, 0.8, 0.7))), progress=False)
    for entry, original in zip(fine.entries, originals):
        _, label = entry.load()
        assert label.shape != tuple(entry.meta["cropped_shape"])
        np.testing.assert_array_equal(restore_geometry(label, entry.meta, label=True), original)

    # a coarser grid keeps one voxel in eight; each restored voxel is exactly the source voxel that
    # nearest-neighbour resampling down then up picks, and zero outside the crop box
    coarse_spacing = [float(s) for s in source * 2]
    coarse = build_cache(discovery, tmp_path, PreprocessConfig(spacing=coarse_spacing), progress=False)
    for entry, original in zip(coarse.entries, originals):
        _, label = entry.load()
        cropped, stored = entry.meta["cropped_shape"], entry.meta["stored_shape"]
        assert list(label.shape) == stored == [round(n / 2) for n in cropped]
        np.testing.assert_allclose(entry.meta["stored_spacing"], coarse_spacing)
        start, stop = entry.meta["crop_start"], entry.meta["crop_stop"]
        picks = [a + nearest(c, s)[nearest(s, c)] for a, c, s in zip(start, cropped, stored)]
        expected = np.zeros_like(original)
        expected[tuple(slice(a, b) for a, b in zip(start, stop))] = original[np.ix_(*picks)]
        np.testing.assert_array_equal(restore_geometry(label, entry.meta, label=True), expected)


def test_cases_with_problems_are_left_out_and_named(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, "brats2021", 2)
    write_case(root, "brats2021", "BraTS2021_00003", nan_in="t1ce")
    cache = build_cache(discover(root, require_labels=True), tmp_path / "cache", progress=False)
    assert [e.case_id for e in cache.entries] == ["BraTS2021_00001", "BraTS2021_00002"]
    assert len(cache.problems) == 1 and "BraTS2021_00003" in str(cache.problems[0])


def test_bad_settings_name_the_field():
    for kwargs, field in (
        ({"spacing": (1, 1)}, "spacing"),
        ({"margin": -1}, "margin"),
        ({"dtype": "int8"}, "dtype"),
        ({"modalities": ["flair", "dwi"]}, "modalities"),
        ({"modalities": ["flair", "flair"]}, "modalities"),
        ({"slices": (40, 40)}, "slices"),
        ({"in_plane": (64,)}, "in_plane"),
        ({"in_plane": (64, 64), "spacing": (1, 1, 1)}, "in_plane"),
        ({"crop": "yes"}, "crop"),
    ):
        with pytest.raises(ValueError, match=f"`{field}`"):
            PreprocessConfig(**kwargs)
    assert PreprocessConfig(modalities=["flair", "t1", "t1ce", "t2"]) == PreprocessConfig()  # all four: the default


def test_the_papers_preprocessing_flair_slices_and_in_plane_resize(phantoms, tmp_path):
    # the paper: FLAIR only, axial slices 40-103 of 155, whole slices resized in-plane; here scaled down
    config = PreprocessConfig(modalities=["flair"], slices=(8, 24), in_plane=(16, 20), crop=False)
    discovery = discover(phantoms, require_labels=True)
    assert_tumour_of_every_class(load_case(case).label[:, :, 8:24] for case in discovery.cases)
    cache = build_cache(discovery, tmp_path, config, progress=False)
    assert cache.problems == []
    for case, entry in zip(discovery.cases, cache.entries):
        volume = load_case(case)
        image, label = entry.load()
        assert image.shape == (1, 16, 20, 16) and label.shape == (16, 20, 16)
        assert entry.meta["modalities"] == ["flair"]
        assert entry.meta["crop_start"] == [0, 0, 8] and entry.meta["crop_stop"] == [48, 40, 24]
        # the stored FLAIR is the source's, resampled: compare against an independent resize
        flair = volume.image[0][:, :, 8:24]
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(flair))[None, None], size=(16, 20, 16), mode="trilinear"
        )[0, 0].numpy()
        brain = expected != 0
        stats = entry.meta["normalisation"][0]
        np.testing.assert_allclose(
            image[0].astype(np.float32)[brain] * stats["std"] + stats["mean"], expected[brain], rtol=2e-3, atol=1.0
        )
        # back on the source grid: outside the slice range is background, inside close to the source
        restored = restore_geometry(label, entry.meta, label=True)
        assert restored.shape == volume.label.shape
        assert not restored[:, :, :8].any() and not restored[:, :, 24:].any()
        picks = [nearest(48, 16)[nearest(16, 48)], nearest(40, 20)[nearest(20, 40)], np.arange(8, 24)]
        np.testing.assert_array_equal(restored[:, :, 8:24], volume.label[np.ix_(*picks)])
    with pytest.raises(ValueError, match="needs 40 axial slices"):
        cache_module.preprocess(load_case(discovery.cases[0]), PreprocessConfig(slices=(0, 40)), "case")
    too_deep = build_cache(discovery, tmp_path / "deep", PreprocessConfig(slices=(0, 40)), progress=False)
    assert (
        too_deep.entries == [] and len(too_deep.problems) == 3 and "needs 40 axial slices" in str(too_deep.problems[0])
    )


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> SharedData:
    return shared_data(tmp_path_factory.mktemp("shared"))


def test_the_shared_exam_is_cached_in_its_own_voxel_order(shared, tmp_path):
    discovery = discover(shared.exam_2023)
    entry = build_cache(discovery, tmp_path, progress=False).entries[0]
    flair = np.asarray(nib.load(discovery.cases[0].images[0]).dataobj).astype(np.float32)
    image, label = entry.load()
    assert label is None and entry.meta["original_shape"] == list(shared.shape)
    box = tuple(slice(a, b) for a, b in zip(entry.meta["crop_start"], entry.meta["crop_stop"]))
    assert entry.shape < shared.shape  # the background around the head was cropped
    stats = entry.meta["normalisation"][0]
    brain = np.any(image != 0, axis=0)
    np.testing.assert_allclose(
        image[0][brain].astype(np.float32), ((flair[box] - stats["mean"]) / stats["std"])[brain], rtol=1e-2, atol=1e-2
    )
    assert np.count_nonzero(flair) == np.count_nonzero(flair[box])  # the crop loses no brain voxel
    np.testing.assert_array_equal(restore_geometry(np.ones(entry.shape, np.uint8), entry.meta, label=True)[box], 1)
    assert os.path.samefile(entry.meta["sources"][0], discovery.cases[0].images[0])


def test_workers_do_not_hang_after_torch_ran_in_parallel(phantoms, tmp_path):
    """A multirun's second job builds its cache in a process whose OpenMP pool is already running;
    forked workers then hung in their first parallel torch op (the in-plane resize)."""
    script = f"""
import torch
from tumorseg.data.cache import PreprocessConfig, build_cache
from tumorseg.data.layouts import discover
torch.set_num_threads(2)
torch.nn.functional.interpolate(torch.rand(1, 4, 64, 64, 64), size=(96, 96, 96), mode="trilinear")
config = PreprocessConfig(modalities=("flair",), slices=(2, 18), in_plane=(96, 96), crop=False)
cache = build_cache(discover({str(phantoms)!r}), {str(tmp_path / "cache")!r}, config, workers=2, progress=False)
print("built", cache.built)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "built 3" in result.stdout


def test_the_intensity_scale_of_a_case_does_not_matter(phantoms, tmp_path):
    """BraTS sites store intensities on different scales (up to a few hundred, or up to 32767):
    the same exam scaled per modality is preprocessed to the same values."""
    case = discover(phantoms, require_labels=True).cases[0]
    scaled_root = tmp_path / "scaled" / case.case_id
    scaled_root.mkdir(parents=True)
    for index, path in enumerate(case.images):
        image = nib.load(path)
        data = np.asanyarray(image.dataobj).astype(np.float64)
        brain = data != 0
        # int16 as the sources, up to 32767 like the largest of the shared BraTS 2018 exams
        factor = 32767 / data.max() if index % 2 else 0.37
        scaled = np.where(brain, np.round(data * factor), 0).astype(np.int16)
        nib.save(nib.Nifti1Image(scaled, image.affine, image.header), scaled_root / path.name)
    nib.save(nib.load(case.label), scaled_root / case.label.name)
    for spacing in (None, (2.0, 2.0, 2.0)):
        config = PreprocessConfig(spacing=spacing, dtype="float32")
        (original,) = build_cache(discover(case.images[0].parent), tmp_path / "a", config, progress=False).entries
        (scaled,) = build_cache(discover(scaled_root), tmp_path / "b", config, progress=False).entries
        (image, label), (scaled_image, scaled_label) = original.load(), scaled.load()
        np.testing.assert_array_equal(label, scaled_label)
        # equal up to the rounding of the scaled int16 values: half a step of 1/0.37 against a std of ~37
        np.testing.assert_allclose(scaled_image, image, atol=0.05)
        assert np.abs(scaled_image - image).mean() < 2e-3

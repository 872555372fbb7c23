"""The datamodule: splits, patch sampling, whole-case loaders, DDP shards, Lightning integration."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchio as tio
from brats_fixtures import write_case, write_dataset

from tumorseg.data.datamodule import (
    BratsDataModule,
    CaseShardSampler,
    TumourPatchSampler,
    kfold_split,
    paper_split,
    read_split_file,
)
from tumorseg.data.layouts import DatasetError
from tumorseg.phantoms import generate_dataset

IDS = [f"case{i:03d}" for i in range(23)]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    generate_dataset(root, 6, seed=5, shape=(48, 40, 32), progress=False)
    return root


def datamodule(root, cache_dir, **kwargs) -> BratsDataModule:
    settings = dict(cache_dir=cache_dir, patch_size=24, batch_size=2, samples_per_volume=2, queue_length=4,
                    num_workers=0, preprocess_workers=1, val_workers=0, num_folds=3)  # fmt: skip
    return BratsDataModule(root, **{**settings, **kwargs})


# ------------------------------------------------------------------------------ splits


def test_kfold_split_is_a_partition_and_fixed_by_the_seed():
    folds = [kfold_split(IDS, 5, k, seed=42) for k in range(5)]
    vals = [set(f["val"]) for f in folds]
    assert set().union(*vals) == set(IDS) and sum(map(len, vals)) == len(IDS)
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and sorted(f["train"] + f["val"]) == IDS
    assert kfold_split(list(reversed(IDS)), 5, 2, seed=42) == folds[2]  # order of discovery does not matter
    assert kfold_split(IDS, 5, 2, seed=7) != folds[2]
    with pytest.raises(ValueError, match="`fold`"):
        kfold_split(IDS, 5, 5, seed=0)


def test_paper_split_takes_the_first_250_cases():
    ids = [f"BraTS20_Training_{i:03d}" for i in range(369, 0, -1)]
    split = paper_split(ids)
    assert split["train"][0] == "BraTS20_Training_001" and split["train"][-1] == "BraTS20_Training_250"
    assert len(split["val"]) == 119 and split["val"][0] == "BraTS20_Training_251"
    with pytest.raises(ValueError, match="only 23 cases.*kfold"):
        paper_split(IDS)


def test_split_files(tmp_path):
    single = tmp_path / "split.json"
    single.write_text(json.dumps({"train": IDS[:20], "val": IDS[20:]}))
    assert read_split_file(single, IDS)["val"] == IDS[20:]
    folds = tmp_path / "splits_final.json"  # nnU-Net's format
    folds.write_text(json.dumps([{"train": IDS[1:], "val": IDS[:1]}, {"train": IDS[:-1], "val": IDS[-1:]}]))
    assert read_split_file(folds, IDS, fold=1)["val"] == IDS[-1:]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": IDS[:5] + ["nobody"], "val": IDS[5:]}))
    with pytest.raises(ValueError, match="nobody"):
        read_split_file(bad, IDS)
    bad.write_text(json.dumps({"train": IDS[:6], "val": IDS[5:]}))
    with pytest.raises(ValueError, match="both train and val.*case005"):
        read_split_file(bad, IDS)


def test_case_shards_are_disjoint_and_complete():
    for world in (1, 2, 3, 4):
        for epoch in (0, 1):
            shards = []
            for rank in range(world):
                sampler = CaseShardSampler(10, world, rank, shuffle=True, seed=1)
                sampler.set_epoch(epoch)
                shards.append(list(sampler))
                assert len(shards[-1]) == len(sampler)
            flat = [i for s in shards for i in s]
            assert sorted(flat) == list(range(10))
    first = CaseShardSampler(10, 1, 0, seed=1)
    order0 = list(first)
    first.set_epoch(1)
    assert list(first) != order0  # reshuffled every epoch


# ------------------------------------------------------------------------------ loaders


def test_training_patches_and_whole_validation_cases(phantoms, tmp_path):
    dm = datamodule(phantoms, tmp_path, foreground_share=1.0)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_entries) == 4 and len(dm.val_entries) == 2
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 4  # 4 cases x 2 patches / batch 2
    seen = set()
    for batch in batches:
        assert batch["image"].shape == (2, 4, 24, 24, 24) and batch["image"].dtype == torch.float16
        assert batch["label"].shape == (2, 24, 24, 24) and batch["label"].dtype == torch.uint8
        # foreground_share=1: every patch is centred on tumour (shifted only where it meets the border)
        assert (batch["label"].flatten(1) > 0).any(1).all()
        seen.update(batch["case_id"])
    assert seen == {e.case_id for e in dm.train_entries}
    for item in dm.val_dataloader():
        entry = next(e for e in dm.val_entries if e.case_id == item["case_id"][0])
        assert item["image"].shape == (1, 4, *entry.shape) and item["label"].shape == (1, *entry.shape)


def test_tumour_sampler_centres_patches_on_tumour_voxels(tmp_path):
    label = np.zeros((40, 40, 40), np.uint8)
    label[[10, 30], [12, 25], [20, 15]] = 3  # two tumour voxels, far from the borders
    np.save(tmp_path / "fg.npy", np.argwhere(label > 0).astype(np.int16))
    subject = tio.Subject(
        label=tio.LabelMap(tensor=torch.from_numpy(label)[None]), foreground_path=str(tmp_path / "fg.npy")
    )
    centres = [tuple(p["location"][:3].tolist()) for p in TumourPatchSampler(8, 1.0)(subject, 20)]
    assert set(centres) == {(6, 8, 16), (26, 21, 11)}  # start = voxel - patch // 2
    uniform = [tuple(p["location"][:3].tolist()) for p in TumourPatchSampler(8, 0.0)(subject, 20)]
    assert len(set(uniform)) > 15


def test_uniform_sampler_and_cases_smaller_than_a_patch(phantoms, tmp_path):
    dm = datamodule(phantoms, tmp_path, sampler="uniform", patch_size=48)  # cropped cases are smaller than 48
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 4, 48, 48, 48)
    assert (batch["image"][:, :, -1] == 0).all()  # zero padding at the far end of a short axis


def test_augmentation_runs_after_transfer_in_training_only(phantoms, tmp_path):
    dm = datamodule(phantoms, tmp_path, augmentation={"p_flip": (1.0, 1.0, 1.0), "p_rotate": 0.0, "p_scale": 0.0,
                                                      "p_noise": 0.0, "p_blur": 0.0, "p_brightness": 0.0,
                                                      "p_contrast": 0.0, "p_gamma": 0.0})  # fmt: skip
    image = torch.randn(2, 4, 8, 8, 8).half()
    label = torch.randint(0, 4, (2, 8, 8, 8), dtype=torch.uint8)
    dm.trainer = SimpleNamespace(training=False)
    out = dm.on_after_batch_transfer({"image": image.clone(), "label": label.clone()}, 0)
    assert out["image"].dtype == torch.float32 and torch.equal(out["image"], image.float())
    dm.trainer = SimpleNamespace(training=True)
    out = dm.on_after_batch_transfer({"image": image.clone(), "label": label.clone()}, 0)
    assert torch.equal(out["image"], image.float().flip(2, 3, 4)) and torch.equal(out["label"], label.flip(1, 2, 3))


def test_dataset_with_problems_is_refused_with_every_problem_named(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, "brats2020", 3)
    write_case(root, "brats2020", "BraTS20_Training_004", missing=("t1ce",))
    write_case(root, "brats2020", "BraTS20_Training_005", bad_label=7)
    dm = datamodule(root, tmp_path / "cache")
    with pytest.raises(DatasetError, match="BraTS20_Training_004") as err:
        dm.prepare_data()
    assert "BraTS20_Training_004" in str(err.value) and "t1ce" in str(err.value)
    assert "BraTS20_Training_005" in str(err.value) and "7" in str(err.value)


@pytest.mark.parametrize(
    "kwargs,field",
    [({"split": "random"}, "split"), ({"sampler": "label"}, "sampler"), ({"patch_size": 0}, "patch_size"),
     ({"queue_length": 1}, "queue_length"), ({"preprocess": {"spacing": 1}}, "spacing"),
     ({"preprocess": {"voxels": 1}}, "preprocess"), ({"augmentation": "heavy"}, "heavy")],
)  # fmt: skip
def test_bad_options_are_named(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=field):
        datamodule(tmp_path, tmp_path, **kwargs)


class _TinyModule(pl.LightningModule):
    """Just enough of a model to run the datamodule through a real Trainer."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(4, 4, 1)

    def training_step(self, batch, _):
        assert batch["image"].dtype == torch.float32  # converted after transfer
        target = torch.nn.functional.one_hot(batch["label"].long(), 4).permute(0, 4, 1, 2, 3).float()
        return torch.nn.functional.binary_cross_entropy_with_logits(self.conv(batch["image"]), target)

    def validation_step(self, batch, _):
        self.log("val/loss", self.conv(batch["image"]).mean(), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_fit_with_a_lightning_trainer_writes_the_split(phantoms, tmp_path):
    dm = datamodule(phantoms, tmp_path / "cache")
    trainer = pl.Trainer(default_root_dir=tmp_path / "run", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, accelerator="cpu", devices=1)  # fmt: skip
    trainer.fit(_TinyModule(), datamodule=dm)
    assert trainer.global_step == 8
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["train"] == [e.case_id for e in dm.train_entries] and split["seed"] == 42


def test_fold_all_trains_and_validates_every_case(phantoms, tmp_path):
    """nnU-Net's fold ``all``: a final model learns from every case; a fold that is neither is refused."""
    dm = datamodule(phantoms, tmp_path / "cache", fold="all")
    dm.setup("fit")
    every = sorted(e.case_id for e in dm.cache.entries)
    assert sorted(e.case_id for e in dm.train_entries) == every == sorted(e.case_id for e in dm.val_entries)
    with pytest.raises(ValueError, match="a fold number or 'all'"):
        datamodule(phantoms, tmp_path / "cache", fold="first")


# ------------------------------------------------------------------------------ DDP


def _ddp_worker(rank: int, world: int, store: str, root: str, cache: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        dm = datamodule(root, cache, num_folds=2)  # 3 training cases over 2 ranks: shards of 2 and 1
        dm.setup("fit")
        record = {"train": [], "val": []}
        for epoch in (0, 1):
            dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, current_epoch=epoch)
            loader = dm.train_dataloader()
            ids = [c for batch in loader for c in batch["case_id"]]
            shard = [dm.train_entries[i].case_id for i in loader.dataset.shards]  # after iterating: the epoch is set
            record["train"].append({"shard": shard, "patches": ids, "batches": len(loader)})
        record["val"] = [b["case_id"][0] for b in dm.val_dataloader()]
        gathered = [None] * world
        dist.all_gather_object(gathered, record)
        if rank == 0:
            Path(out).write_text(json.dumps({"ranks": gathered, "train": [e.case_id for e in dm.train_entries],
                                             "val": [e.case_id for e in dm.val_entries]}))  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_ddp_shards_are_disjoint_and_complete(phantoms, tmp_path):
    out = tmp_path / "ranks.json"
    datamodule(phantoms, tmp_path / "cache").prepare_data()  # as Lightning: built once, before the ranks read it
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(phantoms), str(tmp_path / "cache"), str(out)), nprocs=2)
    result = json.loads(out.read_text())
    ranks = result["ranks"]
    for epoch in (0, 1):
        shards = [r["train"][epoch]["shard"] for r in ranks]
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == sorted(result["train"])
        for r, shard in zip(ranks, shards):
            assert set(r["train"][epoch]["patches"]) <= set(shard)  # each rank trains on its own cases only
        assert ranks[0]["train"][epoch]["batches"] == ranks[1]["train"][epoch]["batches"]  # same steps per rank
    assert [r["train"][0]["shard"] for r in ranks] != [r["train"][1]["shard"] for r in ranks]
    vals = [r["val"] for r in ranks]
    assert not set(vals[0]) & set(vals[1]) and sorted(vals[0] + vals[1]) == sorted(result["val"])
    assert np.all([len(r["train"][0]["patches"]) == len(ranks[0]["train"][0]["patches"]) for r in ranks])


def test_more_ranks_than_validation_cases_is_refused(phantoms, tmp_path):
    dm = datamodule(phantoms, tmp_path / "cache")  # 6 cases, 3 folds: 2 validation cases
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=3, global_rank=0, is_global_zero=True, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match="2 validation case.* cannot be shared by 3 processes"):
        dm.val_dataloader()
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1, is_global_zero=False, default_root_dir=str(tmp_path))
    assert len(dm.val_dataloader()) == 1

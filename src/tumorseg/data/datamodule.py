"""The Lightning datamodule: splits, the preprocessing cache, patch queues and whole-case loaders.

Training patches come from a TorchIO ``Queue`` over the cached cases (memory-mapped, so a worker
reads a case without decompressing or normalising it), drawn by ``TumourPatchSampler``: a share of
patches centred on tumour voxels (nnU-Net oversamples foreground the same way), the rest uniform.
Augmentation runs batched on the training device after the batch is transferred
(``on_after_batch_transfer``), so on a GPU it costs the CPU nothing. Under DDP every rank draws
from its own disjoint shard of the training cases each epoch; validation yields whole cases,
sharded the same way, for sliding-window inference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torchio as tio
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset
from torchio.data.sampler import RandomSampler

from tumorseg.data.augment import BatchAugment
from tumorseg.data.cache import Cache, CacheEntry, PreprocessConfig, build_cache
from tumorseg.data.check import format_problems
from tumorseg.data.layouts import CONVENTION_LAYOUTS, DatasetError, check_convention, convention_hint, discover
from tumorseg.io import cache_root
from tumorseg.labels import convention_label_set
from tumorseg.labels import label_set as _label_set
from tumorseg.sizes import DEFAULT_PATCH_SIZE, size3

log = logging.getLogger(__name__)

PAPER_TRAIN_CASES = 250  # the paper trained on the first 250 BraTS 2020 training cases


def default_cache_dir(root: str | Path) -> Path:
    """One folder per dataset root under ``tumorseg.io.cache_root()`` (``$TUMORSEG_CACHE``, else
    ``$XDG_CACHE_HOME/tumorseg``, else ``~/.cache/tumorseg``)."""
    resolved = Path(root).expanduser().resolve()
    return cache_root() / f"{resolved.name}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"


# ------------------------------------------------------------------------------------ splits


def kfold_split(case_ids: Sequence[str], num_folds: int, fold: int, seed: int) -> dict[str, list[str]]:
    """Fold ``fold`` of a ``num_folds``-fold split of the sorted case ids shuffled with ``seed``."""
    if num_folds < 2:
        raise ValueError(f"`num_folds` must be at least 2, got {num_folds}.")
    if not 0 <= fold < num_folds:
        raise ValueError(f"`fold` must lie in 0..{num_folds - 1}, got {fold}.")
    ids = sorted(case_ids)
    if len(ids) < num_folds:
        raise ValueError(f"{len(ids)} cases cannot be split into `num_folds`={num_folds} folds.")
    order = np.random.default_rng(seed).permutation(len(ids))
    val_idx = set(np.array_split(order, num_folds)[fold].tolist())
    return {
        "train": [c for i, c in enumerate(ids) if i not in val_idx],
        "val": [c for i, c in enumerate(ids) if i in val_idx],
    }


def paper_split(case_ids: Sequence[str], train_cases: int = PAPER_TRAIN_CASES) -> dict[str, list[str]]:
    """The paper's split: the first ``train_cases`` sorted case ids train, the rest validate."""
    ids = sorted(case_ids)
    if len(ids) <= train_cases:
        raise ValueError(
            f"split='paper' trains on the first {train_cases} cases and validates on the rest, "
            f"but the dataset has only {len(ids)} cases; use split='kfold'."
        )
    return {"train": ids[:train_cases], "val": ids[train_cases:]}


def read_split_file(path: str | Path, case_ids: Sequence[str], fold: int = 0) -> dict[str, list[str]]:
    """A split from JSON: ``{"train": [...], "val": [...]}`` or a list of such (nnU-Net's
    ``splits_final.json``), of which ``fold`` is taken."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"split file {path} cannot be read as JSON: {err}") from err
    if isinstance(data, list):
        if not 0 <= fold < len(data):
            raise ValueError(f"split file {path} holds {len(data)} folds; `fold`={fold} is out of range.")
        data = data[fold]
    if not isinstance(data, dict) or not {"train", "val"} <= set(data):
        raise ValueError(f"split file {path} must hold {{'train': [...], 'val': [...]}} or a list of such folds.")
    split = {"train": [str(c) for c in data["train"]], "val": [str(c) for c in data["val"]]}
    known = set(case_ids)
    unknown = sorted(c for c in split["train"] + split["val"] if c not in known)
    if unknown:
        raise ValueError(f"split file {path} names cases that are not in the dataset: {unknown[:10]}")
    both = sorted(set(split["train"]) & set(split["val"]))
    if both:
        raise ValueError(f"split file {path} puts these cases in both train and val: {both[:10]}")
    return split


# ------------------------------------------------------------------------------------ sampling


class CaseShardSampler(DistributedSampler):
    """Each rank's disjoint shard of the cases; together the shards hold every case once.

    Unlike ``DistributedSampler``, which pads with repeated cases so that shards have equal
    length, shards here differ by at most one case. Subclassing ``DistributedSampler`` tells
    Lightning the loader is already distributed, so it neither replaces the sampler nor shards
    twice, and it calls ``set_epoch`` every epoch.
    """

    def __init__(self, num_cases: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}.")
        self.num_cases, self.num_replicas, self.rank = num_cases, num_replicas, rank
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_cases))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_cases, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return len(range(self.rank, self.num_cases, self.num_replicas))


class TumourPatchSampler(RandomSampler):
    """Patches centred on a tumour voxel with probability ``foreground_share``, else uniform.

    Tumour voxel coordinates come precomputed from the cache (``subject["foreground_path"]``),
    so choosing a centre costs nothing; a case without tumour gets uniform patches.
    """

    def __init__(self, patch_size, foreground_share: float = 0.33):
        super().__init__(patch_size)
        if not 0.0 <= foreground_share <= 1.0:
            raise ValueError(f"`foreground_share` must lie in [0, 1], got {foreground_share!r}.")
        self.foreground_share = foreground_share

    def get_probability_map(self, subject: tio.Subject) -> torch.Tensor:  # required by RandomSampler
        return torch.ones(1, *subject.spatial_shape)

    def _generate_patches(self, subject: tio.Subject, num_patches: int | None = None):
        shape = np.array(subject.spatial_shape)
        patch = self.patch_size.astype(int)
        high = shape - patch
        foreground = np.zeros((0, 3), dtype=np.int64)
        if self.foreground_share > 0 and subject.get("foreground_path"):
            foreground = np.load(subject["foreground_path"]).astype(np.int64)
        left = num_patches
        while left is None or left > 0:
            if len(foreground) and torch.rand(1).item() < self.foreground_share:
                centre = foreground[torch.randint(len(foreground), (1,)).item()]
                start = np.clip(centre - patch // 2, 0, high)
            else:
                start = np.array([torch.randint(int(h) + 1, (1,)).item() for h in high])
            yield self.extract_patch(subject, tuple(int(s) for s in start))
            if left is not None:
                left -= 1


class CacheReader:
    """TorchIO reader of cached ``.npy`` arrays: memory-mapped, zero-padded up to ``min_shape``.

    Memory mapping means only the voxels that are used are read; padding (at the far end of each
    axis, so tumour coordinates stay valid) lets cases smaller than a patch be sampled.
    """

    def __init__(self, min_shape: Sequence[int]):
        self.min_shape = tuple(int(s) for s in min_shape)

    def __call__(self, path) -> tuple[torch.Tensor, np.ndarray]:
        array = np.load(path, mmap_mode="c")
        if array.ndim == 3:
            array = array[None]
        pad = [max(m - s, 0) for m, s in zip(self.min_shape, array.shape[1:])]
        if any(pad):
            array = np.pad(array, [(0, 0)] + [(0, p) for p in pad])
        return torch.from_numpy(array), np.eye(4)


def make_subject(entry: CacheEntry, min_shape: Sequence[int]) -> tio.Subject:
    reader = CacheReader(min_shape)
    images = {"image": tio.ScalarImage(entry.image_path, reader=reader)}
    if entry.label_path is not None:
        images["label"] = tio.LabelMap(entry.label_path, reader=reader)
    return tio.Subject(**images, case_id=entry.case_id, foreground_path=str(entry.foreground_path))


class PatchStream(IterableDataset):
    """Training patches of one rank: a fresh TorchIO ``Queue`` per epoch over the rank's shard.

    Every rank yields the same number of patches (ranks whose shard is one case shorter draw their
    last patches from a second pass over it), so DDP ranks run the same number of steps.
    """

    def __init__(
        self,
        entries: list[CacheEntry],
        *,
        patch_size: int | Sequence[int],
        batch_size: int,
        samples_per_volume: int,
        queue_length: int,
        num_workers: int,
        foreground_share: float,
        uniform: bool,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        epoch_fn: Callable[[], int] | None = None,
    ):
        patch_size = size3(patch_size, "patch_size")
        self.subjects = tio.SubjectsDataset([make_subject(e, patch_size) for e in entries])
        self.shards = CaseShardSampler(len(entries), num_replicas, rank, shuffle=True, seed=seed)
        self.patch_size, self.batch_size = patch_size, batch_size
        self.samples_per_volume, self.queue_length, self.num_workers = samples_per_volume, queue_length, num_workers
        self.sampler = tio.UniformSampler(patch_size) if uniform else TumourPatchSampler(patch_size, foreground_share)
        per_rank = math.ceil(len(entries) / num_replicas) * samples_per_volume
        self.num_patches = max(per_rank // batch_size, 1) * batch_size
        self.epoch_fn = epoch_fn
        self._epochs = 0

    def __len__(self) -> int:
        return self.num_patches

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._epochs
        self._epochs += 1
        self.shards.set_epoch(epoch)
        queue = tio.Queue(
            self.subjects,
            max_length=self.queue_length,
            samples_per_volume=self.samples_per_volume,
            sampler=self.sampler,
            subject_sampler=self.shards,
            num_workers=self.num_workers,
            shuffle_subjects=False,
            shuffle_patches=True,
        )
        for i in range(self.num_patches):
            patch = queue[i]
            item = {"image": patch["image"].data, "case_id": patch["case_id"]}
            if "label" in patch:
                item["label"] = patch["label"].data[0]
            yield item


class CaseDataset(Dataset):
    """Whole cached cases for validation and inference."""

    def __init__(self, entries: list[CacheEntry]):
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        image, label = entry.load(mmap=False)
        # source voxels per stored voxel, so that validation's post-processing counts voxels as
        # prediction does, in the source geometry
        source_voxels = math.prod(entry.meta["cropped_shape"]) / math.prod(entry.meta["stored_shape"])
        item = {"image": torch.from_numpy(image), "case_id": entry.case_id, "source_voxels": source_voxels}
        if label is not None:
            item["label"] = torch.from_numpy(label)
        return item


# ------------------------------------------------------------------------------------ datamodule


class BratsDataModule(pl.LightningDataModule):
    """BraTS 2020/2021/2023 or MSD Task01 data, cached, split, patched and augmented.

    Args:
        root: dataset root in any layout ``tumorseg.data.layouts`` knows.
        cache_dir: where preprocessed cases go. Defaults to ``default_cache_dir(root)``.
        layout: force a layout instead of detecting it. Defaults to None.
        convention: read the label files in this convention instead of the layout's own:
            ``"brats2024"`` for BraTS 2024 post-treatment data, named like 2023's. Defaults to None.
        label_set: the label set the model learns (``labels=``); the dataset's convention must be
            one of its own (``tumorseg.labels.LabelSet.conventions``). Defaults to ``"brats2023"``.
        split: ``"kfold"`` (``num_folds`` folds of the shuffled cases, ``fold`` validates) or
            ``"paper"`` (the first 250 cases train, the rest validate). Ignored when
            ``split_file`` is given. Defaults to ``"kfold"``.
        split_file: JSON split, ``{"train": [...], "val": [...]}`` or a list of such folds.
        fold: validation fold, or ``"all"`` (as nnU-Net's ``all``): every case trains, and the
            same cases are validated, which then measures the fit and not generalisation; for a
            final model once the settings are chosen by cross-validation. Defaults to 0.
        num_folds: number of folds. Defaults to 5.
        seed: seed of the fold assignment and of the epoch shuffles. Defaults to 42.
        patch_size: edge of the cubic training patches, or their (x, y, z) size. Defaults to 128.
        batch_size: patches per training batch (per rank). Defaults to 2.
        samples_per_volume: patches drawn from a case each time it is loaded. Defaults to 4.
        queue_length: patches held by the queue (memory: about ``queue_length`` x a patch,
            18 MB at 4x128^3 float16 with its label). Defaults to 24.
        num_workers: processes loading cases for the queue. Defaults to 4.
        sampler: ``"tumour"`` (``foreground_share`` of the patches centred on tumour) or
            ``"uniform"``. Defaults to ``"tumour"``.
        foreground_share: share of tumour-centred patches. Defaults to 0.33 (as nnU-Net).
        augmentation: preset name of ``tumorseg.data.augment`` or a dict of its settings.
            Defaults to ``"default"``.
        preprocess: ``PreprocessConfig`` fields (``spacing``, ``margin``, ``dtype``).
        preprocess_workers: processes that build the cache. Defaults to ``num_workers``.
        val_workers: processes loading whole validation cases. Defaults to 2.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        cache_dir: str | Path | None = None,
        layout: str | None = None,
        convention: str | None = None,
        label_set: str = "brats2023",
        split: str = "kfold",
        split_file: str | Path | None = None,
        fold: int | str = 0,
        num_folds: int = 5,
        seed: int = 42,
        patch_size: int | Sequence[int] = DEFAULT_PATCH_SIZE,
        batch_size: int = 2,
        samples_per_volume: int = 4,
        queue_length: int = 24,
        num_workers: int = 4,
        sampler: str = "tumour",
        foreground_share: float = 0.33,
        augmentation: str | dict = "default",
        preprocess: dict | PreprocessConfig | None = None,
        preprocess_workers: int | None = None,
        val_workers: int = 2,
    ):
        super().__init__()
        if split not in ("kfold", "paper"):
            raise ValueError(f"`split` must be 'kfold' or 'paper' (or give `split_file`), got {split!r}.")
        if sampler not in ("tumour", "uniform"):
            raise ValueError(f"`sampler` must be 'tumour' or 'uniform', got {sampler!r}.")
        # a cube's edge, or (x, y, z): the paper trained on whole resized volumes such as 224x224x64
        self.patch_size = size3(patch_size, "patch_size")
        for name, value in (("batch_size", batch_size), ("samples_per_volume", samples_per_volume),
                            ("queue_length", queue_length)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if queue_length < batch_size:
            raise ValueError(f"`queue_length`={queue_length} must hold at least one batch (`batch_size`={batch_size}).")
        self.root = Path(root).expanduser()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(self.root)
        self.layout, self.split_name, self.split_file = layout, split, split_file
        check_convention(convention, layout)
        self.convention, self.label_set = convention, _label_set(label_set)
        if convention is not None and convention not in self.label_set.conventions:
            wanted = convention_label_set(convention).name
            raise ValueError(
                f"data.convention={convention} holds labels of the {wanted} label set, but the model learns "
                f"labels={self.label_set.name}; pass labels={wanted}."
            )
        if isinstance(fold, str) and fold != "all" or isinstance(fold, bool):
            raise ValueError(f"`fold` must be a fold number or 'all' (train on every case), got {fold!r}.")
        self.fold, self.num_folds, self.seed = fold, num_folds, seed
        self.batch_size = batch_size
        self.samples_per_volume, self.queue_length = samples_per_volume, queue_length
        self.num_workers, self.val_workers = num_workers, val_workers
        self.preprocess_workers = preprocess_workers if preprocess_workers is not None else max(num_workers, 1)
        self.uniform, self.foreground_share = sampler == "uniform", foreground_share
        if isinstance(preprocess, PreprocessConfig):
            self.preprocess_config = preprocess
        else:
            try:
                self.preprocess_config = PreprocessConfig(**(preprocess or {}))
            except TypeError as err:
                raise ValueError(
                    f"`preprocess`: {err}; valid keys: spacing, margin, dtype, modalities, slices, in_plane, crop."
                ) from err
        self.augment = BatchAugment(augmentation)
        self.split: dict[str, list[str]] | None = None
        self.cache: Cache | None = None
        self.grades: dict[str, str] = {}

    # -- preparation

    def _build_cache(self, progress: bool) -> Cache:
        discovery = discover(self.root, require_labels=True, layout=self.layout, convention=self.convention)
        convention = self.convention or discovery.layout
        if convention not in self.label_set.conventions:
            hint = next(
                (convention_hint(c, discovery.layout) for c, layout in CONVENTION_LAYOUTS.items()
                 if layout == discovery.layout and c in self.label_set.conventions),
                f"use data with one of the conventions {', '.join(self.label_set.conventions)}",
            )  # fmt: skip
            raise DatasetError(
                f"{self.root}: labels={self.label_set.name}, but the dataset's labels are read in the {convention} "
                f"convention (of the {discovery.layout} layout, detected from the file names); {hint}."
            )
        # HGG/LGG where the dataset says (BraTS 2017-2019 folders, name_mapping.csv), for split.json
        self.grades = {case.case_id: case.grade for case in discovery.cases if case.grade}
        cache = build_cache(
            discovery, self.cache_dir, self.preprocess_config, workers=self.preprocess_workers, progress=progress
        )
        if cache.problems:
            raise DatasetError(
                f"{self.root}: {len(cache.problems)} problem(s) in the dataset; fix or remove these cases "
                f"(`python -m tumorseg.data check {self.root}` lists them again):\n{format_problems(cache.problems)}"
            )
        return cache

    def prepare_data(self) -> None:
        # one process per node builds the cache; setup() on the other ranks then only reads it,
        # and this process keeps the index instead of discovering the dataset a second time
        self.cache = self._build_cache(progress=True)

    def setup(self, stage: str | None = None) -> None:
        if self.cache is None:
            self.cache = self._build_cache(progress=False)
        ids = [e.case_id for e in self.cache.entries]
        if self.fold == "all":
            self.split = {"train": list(ids), "val": list(ids)}
            log.warning("data.fold=all: all %d cases train and validate; validation Dice measures the fit.", len(ids))
        elif self.split_file is not None:
            self.split = read_split_file(self.split_file, ids, self.fold)
        elif self.split_name == "paper":
            self.split = paper_split(ids)
        else:
            self.split = kfold_split(ids, self.num_folds, self.fold, self.seed)
        by_id = {e.case_id: e for e in self.cache.entries}
        self.train_entries = [by_id[c] for c in self.split["train"]]
        self.val_entries = [by_id[c] for c in self.split["val"]]
        trainer = self.trainer
        if trainer is not None and trainer.is_global_zero:
            self.save_split(Path(trainer.default_root_dir) / "split.json")

    def save_split(self, path: str | Path) -> Path:
        """Write the split in use (and how it was made) as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        how = {"split_file": str(self.split_file)} if self.split_file else {"split": self.split_name}
        record = {
            **how,
            "fold": self.fold,
            "num_folds": self.num_folds,
            "seed": self.seed,
            "preprocess": asdict(self.preprocess_config),
            **self.split,
        }
        used = self.split["train"] + self.split["val"]
        if any(case in self.grades for case in used):
            record["grades"] = {case: self.grades[case] for case in used if case in self.grades}
        path.write_text(json.dumps(record, indent=1))
        return path

    # -- loaders

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._ranks()
        stream = PatchStream(
            self.train_entries,
            patch_size=self.patch_size,
            batch_size=self.batch_size,
            samples_per_volume=self.samples_per_volume,
            queue_length=self.queue_length,
            num_workers=self.num_workers,
            foreground_share=self.foreground_share,
            uniform=self.uniform,
            num_replicas=world,
            rank=rank,
            seed=self.seed,
            epoch_fn=(lambda: self.trainer.current_epoch) if self.trainer is not None else None,
        )
        # TorchIO's queue loads cases in its own workers; this loader only collates, in process
        return DataLoader(stream, batch_size=self.batch_size, num_workers=0)

    def _cases_loader(self, entries: list[CacheEntry]) -> DataLoader:
        world, rank = self._ranks()
        if len(entries) < world:
            # a rank without cases would skip validation and leave the others waiting at the metric sync
            raise ValueError(
                f"{len(entries)} validation case(s) cannot be shared by {world} processes; every rank needs one. "
                f"Use fewer devices, fewer folds (data.num_folds) or a split file with more validation cases."
            )
        return DataLoader(
            CaseDataset(entries),
            batch_size=1,
            sampler=CaseShardSampler(len(entries), world, rank, shuffle=False),
            num_workers=self.val_workers,
            persistent_workers=self.val_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self._cases_loader(self.val_entries)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        batch["image"] = batch["image"].float()
        if self.trainer is not None and self.trainer.training and "label" in batch:
            batch["image"], batch["label"] = self.augment(batch["image"], batch["label"])
        return batch


class SyntheticDataModule(BratsDataModule):
    """``BratsDataModule`` over synthetic phantoms, generated on first use.

    The phantoms go to ``root/<cases>x<shape>-seed<data_seed>-v<phantom version>``, so settings never mix in one
    folder; an existing folder with the same settings is reused (and completed if a previous
    generation was interrupted).

    Args:
        root: parent folder of the generated datasets.
        cases: number of phantoms. Defaults to 16.
        shape: phantom size in voxels. Defaults to 96x96x64.
        data_seed: generator seed. Defaults to 0.
        **kwargs: ``BratsDataModule`` arguments.

    Raises:
        ValueError: a label set other than BraTS 2023's: the phantoms have no resection cavity.
    """

    def __init__(
        self, root: str | Path, *, cases: int = 16, shape: Sequence[int] = (96, 96, 64), data_seed: int = 0, **kwargs
    ):
        labels = _label_set(kwargs.get("label_set", "brats2023"))
        if "brats2020" not in labels.conventions:  # the phantoms' labels (BraTS 2020 layout)
            raise ValueError(
                f"data=synthetic with labels={labels.name}: the phantoms carry BraTS 2023 classes only (NCR, ED, ET; "
                f"no resection cavity). Train labels={labels.name} on real data: data=brats data.root=/path "
                f"data.convention={next(iter(labels.conventions))}, or keep labels=brats2023 for the phantoms."
            )
        shape = tuple(int(s) for s in shape)
        self.cases, self.shape, self.data_seed = cases, shape, data_seed
        from tumorseg.phantoms import PHANTOM_VERSION, phantom_spacing

        # the version in the name: phantoms of an older generator stay where they are, untouched
        name = f"{cases}x{'x'.join(map(str, shape))}-seed{data_seed}-v{PHANTOM_VERSION}"
        folder = Path(root).expanduser() / name
        super().__init__(folder, **kwargs)
        config = self.preprocess_config
        if config.spacing is None and config.in_plane is None:
            # Recorded with the model, so that a real 1 mm scan is resampled to the grid it learned on.
            self.preprocess_config = replace(config, spacing=phantom_spacing(shape))

    def generate(self, progress: bool = True) -> None:
        from tumorseg.phantoms import generate_dataset

        generate_dataset(
            self.root, self.cases, seed=self.data_seed, shape=self.shape, workers=self.preprocess_workers,
            progress=progress,
        )  # fmt: skip

    def prepare_data(self) -> None:
        self.generate()
        super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.cache is None and not (self.root / "synthetic.json").exists():
            self.generate(progress=False)  # setup() without prepare_data(), e.g. in a notebook
        super().setup(stage)

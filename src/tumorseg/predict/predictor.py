"""One predictor: a trained model, or an ensemble, that turns a case into a label map on the
case's own grid.

The steps are the ones training used and recorded with the model: the preprocessing of its data
(crop to the brain, z-score, optional resampling), the sliding-window inference of validation
with the test-time settings of ``conf/inference`` (window, overlap, mirroring), the label scheme
(``tumorseg.inference.schemes``), the post-processing (small enhancing tumour relabelled as
necrosis) and the crop undone. Each setting comes from the model's hyper-parameters (its
checkpoint) unless the caller overrides it explicitly, so one checkpoint predicts the same way
from ``predict.py``, from ``experiments/evaluate_runs.py`` and from Python.

A model is a ``SegmentationModule`` run by PyTorch, or an exported network
(``tumorseg.export.ExportedNetwork``: ONNX run by onnxruntime, or TorchScript) that carries the
same hyper-parameters in its metadata; the sliding window calls either alike, so every backend
shares the preprocessing, windows, mirroring, label scheme and post-processing.

Example:
    >>> predictor = Predictor.from_checkpoints(["best.ckpt"])
    >>> prediction = predictor(dataset_cases("/data/BraTS2021")[0])
    >>> prediction.label.shape  # the source grid, internal classes 0/1/2/3
    >>> Predictor.from_checkpoints(["best.ckpt"], backend="onnx")  # the same, with onnxruntime
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from tumorseg.checkpoints import checkpoint_summary, load_checkpoint, resolve_checkpoint
from tumorseg.data.cache import PreprocessConfig, preprocess, restore_geometry
from tumorseg.data.layouts import Volume
from tumorseg.export.runtime import ExportedNetwork, OnnxNetwork
from tumorseg.inference.schemes import probabilities, to_labels
from tumorseg.inference.sliding_window import InferenceConfig, sliding_window_logits
from tumorseg.labels import BRATS2023, MODALITIES, LabelSet, postprocess, region_probabilities, remove_small_pieces
from tumorseg.predict.cases import InputCase, PredictionError, read_case
from tumorseg.training.module import TEST_TIME_DEFAULTS, SegmentationModule, check_fraction, load_model

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
# what a predictor runs: a trained module, or an export of one with the same hyper-parameters
Model = SegmentationModule | ExportedNetwork


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def test_time_settings(model: Model) -> dict:
    """The test-time settings a model was trained with (its ``inference`` hyper-parameters, the
    settings missing from older checkpoints at their defaults)."""
    return {**TEST_TIME_DEFAULTS, **(model.hparams.get("inference") or {})}


# ------------------------------------------------------------------------------------ models


@dataclass
class ModelGroup:
    """Models that share modalities and preprocessing, so one preprocessed image serves them all."""

    modalities: tuple[str, ...]
    preprocess: PreprocessConfig
    models: list[Model] = field(default_factory=list)


def group_models(models: Sequence[Model]) -> list[ModelGroup]:
    groups: dict[str, ModelGroup] = {}
    for model in models:
        modalities = tuple(model.hparams.modalities)
        config = PreprocessConfig(**{**(model.hparams.get("preprocess") or {}), "modalities": modalities})
        key = json.dumps([modalities, config.key])
        groups.setdefault(key, ModelGroup(modalities, config)).models.append(model)
    return list(groups.values())


# ------------------------------------------------------------------------------------ reading


@dataclass
class PreparedCase:
    """A case read and preprocessed for each model group, with what writing its outputs needs."""

    item: InputCase
    inputs: list[tuple[torch.Tensor, dict]]  # per model group: preprocessed image, geometry to undo
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: nib.Nifti1Header
    display: np.ndarray  # the FLAIR (or the first modality) on the source grid, for figures
    display_name: str
    read_s: float


class CaseReader:
    """Reads and preprocesses cases for a predictor's model groups. Holds no model, so that it can
    run in DataLoader worker processes while the device segments the previous case."""

    def __init__(self, groups: Sequence[tuple[tuple[str, ...], PreprocessConfig]]):
        self.groups = list(groups)
        self.needed = sorted({m for modalities, _ in self.groups for m in modalities}, key=MODALITIES.index)

    def __call__(self, item: InputCase) -> PreparedCase:
        start = time.perf_counter()
        arrays, affine, spacing, header = read_case(item, self.needed)
        inputs = []
        for modalities, config in self.groups:
            volume = Volume(np.stack([arrays[m] for m in modalities]), None, affine, spacing)
            image, _, meta = preprocess(volume, config, item.case_id)
            inputs.append((torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), meta))
        display = arrays.get("flair", next(iter(arrays.values())))
        name = "FLAIR" if "flair" in arrays else next(iter(arrays)).upper()
        return PreparedCase(item, inputs, affine, spacing, header, display, name, time.perf_counter() - start)


# ------------------------------------------------------------------------------------ predictor


@dataclass
class Prediction:
    """A case segmented on its source grid."""

    case: PreparedCase
    label: np.ndarray  # internal classes of label_set (0 background, 1 NCR, 2 ED, 3 ET), uint8
    probabilities: torch.Tensor  # (channel, x, y, z), averaged over the models
    channels: tuple[str, ...]  # WT/TC/ET, or background/NCR/ED/ET
    relabelled: bool  # small enhancing tumour relabelled as necrosis
    infer_s: float
    label_set: LabelSet = BRATS2023  # the classes of ``label`` (BraTS 2024: NETC, SNFH, ET, RC)


class Predictor:
    """Segments cases with one model or the average of several (an ensemble): trained modules, or
    exported networks (``tumorseg.export``), which run in the same sliding window.

    Each model runs the sliding window with its own recorded settings (``inference`` in its
    hyper-parameters: ``conf/inference`` when it trained); an argument given here overrides that
    setting for every model, None keeps each model's. Models that share their modalities and
    preprocessing share one preprocessed image. With several models, the probabilities are
    averaged: of the common label scheme, or of the WT/TC/ET regions when the schemes differ.

    Args:
        models: a ``SegmentationModule`` or an ``ExportedNetwork``, or several.
        overlap: window overlap for every model. Defaults to None (each model's).
        sw_batch_size: windows per forward pass for every model. Defaults to None (each model's).
        mirror: average over the 8 mirrorings, for every model. Defaults to None (each model's).
        et_min_voxels: enhancing tumour under this many voxels becomes necrosis (0: never).
            Defaults to None: the models' setting, which must then agree.
        wt_min_fraction: pieces of tumour (26-connected) smaller than this fraction of the
            largest are removed (0: none; 1: all but the largest). Defaults to None: the models'
            setting, which must then agree.
        bf16: bfloat16 autocast of PyTorch modules (exports run as exported, in float32).
            Defaults to None (on a GPU only).
        device: ``"auto"`` (a GPU when there is one; the CPU when every model is an ONNX export,
            which onnxruntime runs there), ``"cpu"``, ``"cuda:1"``, ... Defaults to ``"auto"``.
        names: how messages name the models (their checkpoint files). Defaults to "model 1", ...

    Raises:
        PredictionError: no model, a model with unknown input modalities, ensemble members whose
            ``et_min_voxels`` or ``wt_min_fraction`` differ without an override or that learned
            different label sets, or a
            bad override.
    """

    def __init__(
        self,
        models: Model | Sequence[Model],
        *,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        mirror: bool | None = None,
        et_min_voxels: int | None = None,
        wt_min_fraction: float | None = None,
        bf16: bool | None = None,
        device: str | torch.device = "auto",
        names: Sequence[str] | None = None,
    ):
        self.models = [models] if isinstance(models, (SegmentationModule, ExportedNetwork)) else list(models)
        if not self.models:
            raise PredictionError("A predictor needs at least one model.")
        self.names = list(names) if names is not None else [f"model {i + 1}" for i in range(len(self.models))]
        for model, name in zip(self.models, self.names):
            unknown = [m for m in model.hparams.modalities if m not in MODALITIES]
            if unknown:
                raise PredictionError(f"{name}: unknown input modalities {unknown} in the checkpoint.")
        if device == "auto" and all(isinstance(model, OnnxNetwork) for model in self.models):
            device = "cpu"
        self.device = resolve_device(device)
        bf16 = self.device.type == "cuda" if bf16 is None else bool(bf16)
        recorded = [test_time_settings(model) for model in self.models]
        given = {"overlap": overlap, "sw_batch_size": sw_batch_size, "mirror": mirror}
        given = {key: value for key, value in given.items() if value is not None}
        window = ("roi_size", "overlap", "sw_batch_size", "mode", "mirror")
        try:
            self.configs = [
                InferenceConfig(
                    **{
                        **{k: settings[k] for k in window if k in settings},
                        **given,
                        "bf16": bf16 and isinstance(model, SegmentationModule),  # exports run as exported
                    }
                )
                for model, settings in zip(self.models, recorded)
            ]
        except ValueError as err:
            raise PredictionError(f"Test-time settings: {err}") from err
        if et_min_voxels is None:
            values = sorted({int(settings["et_min_voxels"]) for settings in recorded})
            if len(values) > 1:
                raise PredictionError(
                    f"The models differ in inference.et_min_voxels ({values}); give et_min_voxels=N for all of them."
                )
            et_min_voxels = values[0]
        if isinstance(et_min_voxels, bool) or not isinstance(et_min_voxels, int) or et_min_voxels < 0:
            raise PredictionError(f"et_min_voxels must be 0 or more voxels, got {et_min_voxels!r}.")
        self.et_min_voxels = et_min_voxels
        if wt_min_fraction is None:
            # absent from checkpoints made before it existed: 0, no piece removed
            values = sorted({float(settings.get("wt_min_fraction", 0.0)) for settings in recorded})
            if len(values) > 1:
                raise PredictionError(
                    f"The models differ in inference.wt_min_fraction ({values}); give wt_min_fraction=F for all of them."
                )
            wt_min_fraction = values[0]
        try:
            self.wt_min_fraction = check_fraction(wt_min_fraction, "wt_min_fraction")
        except ValueError as err:
            raise PredictionError(str(err)) from err
        label_sets = {model.label_set.name: model.label_set for model in self.models}
        if len(label_sets) > 1:
            raise PredictionError(
                f"The models learned different label sets ({', '.join(sorted(label_sets))}); ensemble models of one."
            )
        self.label_set: LabelSet = next(iter(label_sets.values()))
        schemes = {model.scheme for model in self.models}
        self.scheme = schemes.pop() if len(schemes) == 1 else "regions"
        self.groups = group_models(self.models)
        # reads and preprocesses cases for all groups at once; holds no model (DataLoader workers)
        self.reader = CaseReader([(group.modalities, group.preprocess) for group in self.groups])
        for model in self.models:
            model.eval().to(self.device)

    @classmethod
    def from_checkpoints(
        cls,
        specs: Sequence[str | Path],
        sha256: Sequence[str | None] | None = None,
        *,
        progress: bool = True,
        allow_http: bool = False,
        backend: str = "torch",
        **settings,
    ) -> Predictor:
        """A predictor of the checkpoints ``specs`` (paths or https URLs, plain http too with
        ``allow_http``, downloaded once and verified against ``sha256``, one digest per checkpoint);
        ``settings`` as for the constructor.

        ``backend`` runs training checkpoints with ``"torch"``, or with ``"onnx"``: each is exported
        to ONNX in memory first (``tumorseg.export.export_model``, verified against PyTorch, a few
        seconds to a minute per network) and run by onnxruntime on the CPU. Exports given as
        ``specs`` (``python -m tumorseg.export``: an ``.onnx`` file, or a TorchScript archive) run
        with their own runtime whatever ``backend`` says, their hyper-parameters read from their metadata.
        """
        from tumorseg.export.runtime import is_export, load_exported

        if backend not in BACKENDS:
            raise PredictionError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}.")

        specs = list(specs)
        digests = list(sha256) if sha256 else [None] * len(specs)
        if len(digests) != len(specs):
            raise PredictionError(
                f"ckpt_sha256 has {len(digests)} digest(s) for {len(specs)} checkpoint(s); give one per checkpoint."
            )
        paths = [resolve_checkpoint(s, d, progress=progress, allow_http=allow_http) for s, d in zip(specs, digests)]
        models: list[Model] = []
        for path in paths:
            if is_export(path):
                exported = load_exported(path)
                meta = exported.metadata
                log.info(
                    "Model %s: %s export of %s (tumorseg %s, from %s), run by %s", path, meta["format"],
                    meta["network"], meta.get("tumorseg_version"), meta["source"].get("checkpoint"), exported.runtime,
                )  # fmt: skip
                models.append(exported)
                continue
            summary = checkpoint_summary(load_checkpoint(path))
            log.info("Model %s: %s", path, ", ".join(f"{k}={v}" for k, v in summary.items()))
            model = load_model(path)
            if backend == "onnx":
                from tumorseg.export.exporter import export_model

                exported = export_model(model, "onnx", source={"checkpoint": Path(path).name})
                log.info("Model %s exported to ONNX in memory: %s", path, exported.describe())
                exported.network.name = str(path)
                model = exported.network
            models.append(model)
        return cls(models, names=[str(p) for p in paths], **settings)

    @property
    def modalities(self) -> list[str]:
        """The modalities the models need, in ``MODALITIES`` order."""
        return self.reader.needed

    def describe(self) -> list[str]:
        """One line per model: the settings it runs with."""
        return [
            f"{name}: {getattr(model, 'runtime', 'torch')}, roi {list(c.roi_size)}, overlap {c.overlap}, "
            f"{c.sw_batch_size} window(s) per pass, {c.mode}, "
            f"mirror {'on' if c.mirror else 'off'}, bf16 {'on' if c.bf16 else 'off'}, "
            f"ET under {self.et_min_voxels} voxels -> NCR, tumour pieces under {self.wt_min_fraction:g} of the largest removed"
            for name, model, c in zip(self.names, self.models, self.configs)
        ]

    def __call__(self, item: InputCase) -> Prediction:
        """Read, preprocess and segment one case."""
        return self.segment(self.reader(item))

    @torch.no_grad()
    def segment(self, case: PreparedCase) -> Prediction:
        """Segment a case that ``reader`` prepared."""
        start = time.perf_counter()
        configs = {id(model): config for model, config in zip(self.models, self.configs)}
        total, count = None, 0
        for group, (image, meta) in zip(self.groups, case.inputs):
            image = image.to(self.device).unsqueeze(0)
            for model in group.models:
                logits = sliding_window_logits(model, image, configs[id(model)])
                probs = probabilities(logits, model.scheme)[0]
                if self.scheme == "regions":
                    probs = region_probabilities(probs, model.scheme, self.label_set)
                full = torch.from_numpy(restore_geometry(probs.cpu().numpy(), meta, label=False))
                if self.scheme == "softmax4":  # outside the crop is background
                    inside = torch.from_numpy(
                        restore_geometry(np.ones(meta["stored_shape"], np.float32), meta, label=False)
                    )
                    full[0] += 1 - inside
                total = full if total is None else total.add_(full)
                count += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        probs = total / count
        label = to_labels(probs.unsqueeze(0), self.scheme, labels=self.label_set)[0].numpy()
        label, removed = remove_small_pieces(label, self.wt_min_fraction)
        if removed:
            log.info(
                "case %s: %d piece(s) of tumour under %g of the largest removed.",
                case.item.case_id, removed, self.wt_min_fraction,
            )  # fmt: skip
        label, relabelled = postprocess(label, self.et_min_voxels)
        if relabelled:
            log.info(
                "case %s: enhancing tumour under %d voxels relabelled as necrosis.",
                case.item.case_id,
                self.et_min_voxels,
            )
        channels = self.label_set.channels if self.scheme == "regions" else self.label_set.classes
        return Prediction(case, label, probs, tuple(channels), relabelled, time.perf_counter() - start, self.label_set)

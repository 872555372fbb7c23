"""Segment new scans with one trained model or an ensemble, in the scans' own geometry.

Each case is read (any layout ``tumorseg.data.layouts`` knows, or four explicit files),
preprocessed as the checkpoint's training data was (crop to the brain, z-score, optional
resampling), run through the sliding-window inference that validation uses, mapped back to the
source grid (the crop undone) and written as a uint8 NIfTI in the input's label convention with
the input's affine, a PNG of three orthogonal views, optional probability maps and a
``summary.csv`` of tumour volumes. Cases are read and preprocessed in worker processes while the
previous case runs on the device.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tumorseg.data.cache import PreprocessConfig, preprocess, restore_geometry
from tumorseg.data.layouts import LAYOUTS, Case, CaseError, Volume, discover, load_case, select_cases
from tumorseg.inference.schemes import probabilities, to_labels
from tumorseg.inference.sliding_window import InferenceConfig, sliding_window_logits
from tumorseg.labels import (
    CONVENTIONS,
    MODALITIES,
    REGIONS,
    from_internal,
    postprocess,
    region_probabilities,
    to_internal,
    volumes_cm3,
)
from tumorseg.training.module import SegmentationModule

log = logging.getLogger(__name__)

# BraTS 2023 file suffixes name the same modalities differently
_SUFFIXES = {"flair": ("flair", "t2f"), "t1": ("t1", "t1n"), "t1ce": ("t1ce", "t1c"), "t2": ("t2", "t2w")}


class PredictionError(ValueError):
    """Prediction cannot start: bad options, checkpoints or inputs (the message says which)."""


# ------------------------------------------------------------------------------------ inputs


@dataclass
class InputCase:
    """One case to segment: its modality files, the label convention of its layout, and its
    reference label file where the dataset has one."""

    case_id: str
    files: dict[str, Path]  # modality -> file; for MSD the one 4D file under "image"
    convention: str
    reference: Path | None = None
    layout: str | None = None


def explicit_case(files: dict[str, str | None], case_id: str | None, convention: str) -> InputCase:
    """A case from explicit modality files (``files.flair=... files.t1=...``)."""
    given = {m: Path(p).expanduser() for m, p in files.items() if p}
    unknown = sorted(set(given) - set(MODALITIES))
    if unknown:
        raise PredictionError(
            f"files.{unknown[0]}: unknown modality; use {', '.join(f'files.{m}' for m in MODALITIES)}."
        )
    if not given:
        raise PredictionError(
            "Give `input=PATH` (a case folder or a dataset root) or the modality files `files.<m>=PATH`."
        )
    for modality, path in given.items():
        if not path.is_file():
            raise PredictionError(f"files.{modality}={path}: no such file.")
    if case_id is None:
        first = given.get("flair") or next(iter(given.values()))
        case_id = first.name.split(".nii")[0]
        for suffix in (*_SUFFIXES.get("flair", ()), *(s for m in MODALITIES for s in _SUFFIXES[m])):
            for sep in ("_", "-"):
                if case_id.endswith(sep + suffix):
                    case_id = case_id[: -len(sep + suffix)]
                    break
    return InputCase(case_id=case_id, files=given, convention=convention)


def dataset_cases(root: str | Path, layout: str | None = None) -> list[InputCase]:
    """Every case under a dataset root or in a single case folder, with their references if any."""
    discovery = discover(root, require_labels=False, layout=layout)
    for problem in discovery.problems:
        log.warning("Skipped: %s", problem)
    if not discovery.cases:
        raise PredictionError(f"{root}: no usable case found ({len(discovery.problems)} problem(s) listed above).")
    cases = []
    for case in discovery.cases:
        files = {"image": case.images[0]} if case.layout == "msd" else dict(zip(MODALITIES, case.images))
        cases.append(InputCase(case.case_id, files, case.layout, case.label, case.layout))
    return cases


def read_case(
    item: InputCase, needed: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray, tuple, nib.Nifti1Header]:
    """The needed modalities as float32 arrays, the affine, the spacing and the header of the
    first image file (for writing the output in the same space)."""
    missing = [m for m in needed if m not in item.files and "image" not in item.files]
    if missing:
        raise CaseError(
            f"case {item.case_id}: the model needs {list(needed)}, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing; give files.{missing[0]}=PATH."
        )
    if item.layout is not None and item.layout in LAYOUTS:
        images = (item.files["image"],) if "image" in item.files else tuple(item.files[m] for m in MODALITIES)
        volume = load_case(Case(item.case_id, item.layout, images, None))
        arrays = {m: volume.image[i] for i, m in enumerate(MODALITIES)}
        header = nib.load(images[0]).header
        return {m: arrays[m] for m in needed}, volume.affine, volume.spacing, header
    arrays, affine, spacing, header, shape = {}, None, None, None, None
    for modality in needed:
        path = item.files[modality]
        try:
            img = nib.load(path)
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as err:  # nibabel raises many types for unreadable files
            raise CaseError(f"case {item.case_id}: {path} cannot be read as NIfTI: {err}") from err
        if data.ndim != 3:
            raise CaseError(f"case {item.case_id}: {path} has shape {data.shape}; a 3D image is expected.")
        if shape is None:
            shape, affine, spacing, header = data.shape, img.affine, img.header.get_zooms()[:3], img.header
        elif data.shape != shape or not np.allclose(img.affine, affine, atol=1e-3):
            raise CaseError(
                f"case {item.case_id}: {path} ({data.shape}) is not on the grid of files.{needed[0]} ({shape}); "
                "the modalities must be co-registered on one grid."
            )
        arrays[modality] = data
    return arrays, np.asarray(affine, dtype=np.float64), tuple(float(s) for s in spacing), header


# ------------------------------------------------------------------------------------ models


@dataclass
class ModelGroup:
    """Models that share modalities and preprocessing, so one preprocessed image serves them all."""

    modalities: tuple[str, ...]
    preprocess: PreprocessConfig
    models: list[SegmentationModule] = field(default_factory=list)


def group_models(models: Sequence[SegmentationModule]) -> list[ModelGroup]:
    groups: dict[str, ModelGroup] = {}
    for model in models:
        modalities = tuple(model.hparams.modalities)
        config = PreprocessConfig(**{**(model.hparams.get("preprocess") or {}), "modalities": modalities})
        key = json.dumps([modalities, config.key])
        groups.setdefault(key, ModelGroup(modalities, config)).models.append(model)
    return list(groups.values())


# ------------------------------------------------------------------------------------ loading workers


class _Cases(Dataset):
    """Reads and preprocesses cases in DataLoader workers; a failure becomes an error record."""

    def __init__(self, items: list[InputCase], groups: list[ModelGroup]):
        # only what the workers need: no models in the worker processes
        self.items = items
        self.groups = [(g.modalities, g.preprocess) for g in groups]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        start = time.perf_counter()
        try:
            needed = sorted({m for modalities, _ in self.groups for m in modalities}, key=MODALITIES.index)
            arrays, affine, spacing, header = read_case(item, needed)
            inputs = []
            for modalities, config in self.groups:
                volume = Volume(np.stack([arrays[m] for m in modalities]), None, affine, spacing)
                image, _, meta = preprocess(volume, config, item.case_id)
                inputs.append((torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), meta))
        except (CaseError, ValueError, OSError) as err:
            return {"item": item, "error": str(err)}
        display = arrays.get("flair", next(iter(arrays.values())))
        return {
            "item": item, "inputs": inputs, "affine": affine, "spacing": spacing, "header": header,
            "display": display, "display_name": "FLAIR" if "flair" in arrays else next(iter(arrays)).upper(),
            "read_s": time.perf_counter() - start,
        }  # fmt: skip


def _first(record: dict) -> dict:
    return record  # batch_size=None: each record is one case, nothing to collate


# ------------------------------------------------------------------------------------ writing


def write_atomic_nifti(array: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None, path: Path) -> None:
    """Write a NIfTI in the space of ``header`` (same affine, qform and sform codes)."""
    img = nib.Nifti1Image(array, affine)
    if header is not None:
        img.set_qform(affine, code=int(header["qform_code"]) or 1)
        img.set_sform(affine, code=int(header["sform_code"]) or 1)
        zooms = header.get_zooms()[:3]
        img.header.set_zooms(tuple(zooms) + img.header.get_zooms()[3:])
    img.set_data_dtype(array.dtype)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.nii.gz")
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ predictor


@dataclass
class PredictSettings:
    """What ``predict`` does besides the models' own settings."""

    output_dir: Path
    overlap: float | None = None
    sw_batch_size: int | None = None
    mirror: bool = False
    bf16: bool | None = None
    device: str = "auto"
    et_min_voxels: int = 0
    save_probabilities: bool = False
    png: bool = True
    overwrite: bool = False
    workers: int = 2
    labels: str = "auto"
    progress: bool = True


@dataclass
class PredictReport:
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    summary_csv: Path | None = None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_models(models: Sequence[SegmentationModule], names: Sequence[str]) -> None:
    for model, name in zip(models, names):
        unknown = [m for m in model.hparams.modalities if m not in MODALITIES]
        if unknown:
            raise PredictionError(f"{name}: unknown input modalities {unknown} in the checkpoint.")


def predict(items: list[InputCase], models: Sequence[SegmentationModule], settings: PredictSettings) -> PredictReport:
    """Segment ``items`` with the average of ``models``; see the module docstring."""
    out_dir = Path(settings.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(settings.device)
    bf16 = device.type == "cuda" if settings.bf16 is None else settings.bf16
    for model in models:
        model.eval().to(device)
    groups = group_models(models)
    report = PredictReport()

    todo = []
    for item in items:
        target = out_dir / f"{item.case_id}.nii.gz"
        if target.exists() and not settings.overwrite:
            report.kept.append(item.case_id)
        else:
            todo.append(item)
    if report.kept:
        log.info("%d case(s) already segmented in %s are kept (overwrite=true redoes them).", len(report.kept), out_dir)

    loader = DataLoader(
        _Cases(todo, groups), batch_size=None, num_workers=min(settings.workers, len(todo)),
        collate_fn=_first, prefetch_factor=1 if settings.workers > 0 and todo else None,
    )  # fmt: skip
    from rich.progress import Progress

    with Progress(disable=not settings.progress) as bar:
        task = bar.add_task("segmenting", total=len(todo))
        for record in loader:
            item = record["item"]
            if "error" in record:
                report.failed[item.case_id] = record["error"]
                log.error("case %s failed: %s", item.case_id, record["error"])
            else:
                try:
                    report.timings[item.case_id] = _segment(record, groups, settings, device, bf16, out_dir)
                    report.written.append(item.case_id)
                except (CaseError, ValueError, RuntimeError) as err:
                    report.failed[item.case_id] = str(err)
                    log.error("case %s failed: %s", item.case_id, err)
            bar.advance(task)

    conventions = {i.case_id: (i.convention if settings.labels == "auto" else settings.labels) for i in items}
    report.summary_csv = write_summary(out_dir, {c: v for c, v in conventions.items() if c not in report.failed})
    return report


def _segment(record: dict, groups: list[ModelGroup], settings: PredictSettings, device, bf16: bool, out_dir: Path):
    item: InputCase = record["item"]
    start = time.perf_counter()
    total, count, scheme = None, 0, None
    schemes = {m.scheme for g in groups for m in g.models}
    common = schemes.pop() if len(schemes) == 1 else "regions"
    for group, (image, meta) in zip(groups, record["inputs"]):
        image = image.to(device).unsqueeze(0)
        for model in group.models:
            base = model.inference_config
            config = InferenceConfig(
                roi_size=base.roi_size,
                overlap=settings.overlap if settings.overlap is not None else base.overlap,
                sw_batch_size=settings.sw_batch_size or base.sw_batch_size,
                mode=base.mode,
                mirror=settings.mirror,
                bf16=bf16,
            )
            logits = sliding_window_logits(model, image, config)
            probs = probabilities(logits, model.scheme)[0]
            if common == "regions":
                probs = region_probabilities(probs, model.scheme)
            full = torch.from_numpy(restore_geometry(probs.cpu().numpy(), meta, label=False))
            if common == "softmax4":  # outside the crop is background
                inside = torch.from_numpy(
                    restore_geometry(np.ones(meta["stored_shape"], np.float32), meta, label=False)
                )
                full[0] += 1 - inside
            total = full if total is None else total.add_(full)
            count += 1
            scheme = common
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    infer_s = time.perf_counter() - start

    start = time.perf_counter()
    probs = total / count
    label = to_labels(probs.unsqueeze(0), scheme)[0].numpy()
    label, relabelled = postprocess(label, settings.et_min_voxels)
    if relabelled:
        log.info(
            "case %s: enhancing tumour under %d voxels relabelled as necrosis.", item.case_id, settings.et_min_voxels
        )
    convention = item.convention if settings.labels == "auto" else settings.labels
    target = out_dir / f"{item.case_id}.nii.gz"
    write_atomic_nifti(from_internal(label, convention), record["affine"], record["header"], target)
    if settings.save_probabilities:
        names = REGIONS if scheme == "regions" else ("background", "ncr", "ed", "et")
        # a folder of its own, so that the segmentation folder holds one label file per case
        prob_dir = out_dir / "probabilities"
        prob_dir.mkdir(exist_ok=True)
        path = prob_dir / f"{item.case_id}.nii.gz"
        maps = np.moveaxis(probs.numpy().astype(np.float32), 0, -1)
        write_atomic_nifti(maps, record["affine"], record["header"], path)
        (prob_dir / "channels.json").write_text(json.dumps({"channels": list(names)}))
    if settings.png:
        from tumorseg.plots import orthogonal_views, save_figure

        fig = orthogonal_views(
            record["display"], label, spacing=record["spacing"], modality=record["display_name"], title=item.case_id
        )
        save_figure(fig, out_dir / f"{item.case_id}.png")
    return {"read_s": record["read_s"], "infer_s": infer_s, "write_s": time.perf_counter() - start}


def write_summary(out_dir: Path, conventions: dict[str, str]) -> Path:
    """``summary.csv``: WT/TC/ET volumes in cm^3 of the segmentations in ``out_dir`` of these cases
    (case id -> the label convention they were written in)."""
    rows = []
    for case_id, convention in conventions.items():
        path = out_dir / f"{case_id}.nii.gz"
        if not path.exists():
            continue
        img = nib.load(path)
        internal = to_internal(np.asarray(img.dataobj), convention, source=str(path))
        rows.append({"case_id": case_id, **volumes_cm3(internal, img.header.get_zooms()[:3])})
    path = out_dir / "summary.csv"
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case_id", *(f"{r}_cm3" for r in REGIONS)])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------ command line


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    return list(value)


def _chosen(items: list[InputCase], spec, root: Path) -> list[InputCase]:
    """The cases of ``items`` that ``cases=`` names, in its order."""
    try:
        wanted = select_cases(spec)
    except ValueError as err:
        raise PredictionError(f"cases={spec}: {err}") from err
    by_id = {i.case_id: i for i in items}
    unknown = [c for c in wanted if c not in by_id]
    if unknown:
        raise PredictionError(
            f"cases: {len(unknown)} case(s) are not in input={root}: {unknown[:5]}; check the input folder or the list."
        )
    return [by_id[c] for c in dict.fromkeys(wanted)]


def run(cfg) -> int:
    """``predict.py``: resolve and load the checkpoints, find the cases, segment them, evaluate
    against references where the input has them; returns the exit status."""
    from tumorseg.checkpoints import checkpoint_summary, load_checkpoint, load_model, resolve_checkpoint

    specs = _as_list(cfg.ckpt_path)
    if not specs:
        raise PredictionError("Give `ckpt_path=PATH` (or a URL, or a list [A,B,C] for an ensemble).")
    digests = _as_list(cfg.get("ckpt_sha256"))
    if digests and len(digests) != len(specs):
        raise PredictionError(
            f"ckpt_sha256 has {len(digests)} digest(s) for {len(specs)} checkpoint(s); give one per checkpoint."
        )
    paths = [resolve_checkpoint(s, d, progress=cfg.progress) for s, d in zip(specs, digests or [None] * len(specs))]
    models = []
    for path in paths:
        summary = checkpoint_summary(load_checkpoint(path))
        log.info("Model %s: %s", path, ", ".join(f"{k}={v}" for k, v in summary.items()))
        models.append(load_model(path))
    check_models(models, [str(p) for p in paths])
    needed = sorted({m for model in models for m in model.hparams.modalities}, key=MODALITIES.index)

    labels = cfg.labels
    if labels != "auto" and labels not in CONVENTIONS:
        raise PredictionError(f"labels={labels!r}: choose auto or one of {sorted(CONVENTIONS)}.")
    if cfg.input:
        root = Path(cfg.input).expanduser()
        if root.is_file():
            raise PredictionError(
                f"input={root} is a file; give its folder, or the modality files as files.flair=... files.t1=..."
            )
        if not root.exists():
            raise PredictionError(f"input={root}: no such folder.")
        items = dataset_cases(root, cfg.get("layout"))
        if cfg.get("cases"):
            items = _chosen(items, cfg.cases, root)
    else:
        files = {m: cfg.files.get(m) for m in cfg.files}
        items = [explicit_case(files, cfg.get("case_id"), "brats2020" if labels == "auto" else labels)]
        missing = [m for m in needed if m not in items[0].files]
        if missing:
            raise PredictionError(
                f"The checkpoint(s) were trained on {needed}; {', '.join(f'files.{m}' for m in missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing."
            )
        if labels == "auto":
            log.info(
                "Explicit files: labels written in the BraTS 2020/2021 convention (0/1/2/4); set labels= to change."
            )

    out_dir = Path(cfg.output_dir).expanduser()
    settings = PredictSettings(
        output_dir=out_dir, overlap=cfg.overlap, sw_batch_size=cfg.sw_batch_size, mirror=cfg.mirror,
        bf16=cfg.bf16, device=cfg.device, et_min_voxels=cfg.et_min_voxels, save_probabilities=cfg.save_probabilities,
        png=cfg.png, overwrite=cfg.overwrite, workers=cfg.workers, labels=labels, progress=cfg.progress,
    )  # fmt: skip
    started = time.perf_counter()
    report = predict(items, models, settings)
    elapsed = time.perf_counter() - started
    print(format_report(report, out_dir, elapsed), flush=True)

    status = 1 if report.failed else 0
    with_refs = [i for i in items if i.reference is not None]
    if cfg.evaluate and with_refs and cfg.input:
        from tumorseg.evaluate import evaluate_folder

        result = evaluate_folder(
            out_dir, Path(cfg.input), labels="auto", out=out_dir / "metrics.csv", progress=cfg.progress,
            cases=[i.case_id for i in items],
        )  # fmt: skip
        if result.missing or result.errors:
            status = 1
    return status


def format_report(report: PredictReport, out_dir: Path, elapsed: float) -> str:
    lines = [
        f"Segmentations: {out_dir}  ({len(report.written)} written, {len(report.kept)} kept, {len(report.failed)} failed, {elapsed:.1f} s)"
    ]
    if report.timings:
        t = {k: float(np.median([v[k] for v in report.timings.values()])) for k in ("read_s", "infer_s", "write_s")}
        lines.append(
            f"Median per case: read+preprocess {t['read_s']:.2f} s, inference {t['infer_s']:.2f} s, write {t['write_s']:.2f} s"
        )
    for case_id, message in report.failed.items():
        lines.append(f"FAILED {case_id}: {message}")
    if report.summary_csv:
        lines.append(f"Volumes: {report.summary_csv}")
    return "\n".join(lines)

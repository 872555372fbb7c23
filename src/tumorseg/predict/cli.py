"""The prediction command, ``tumorseg-predict`` (``python -m tumorseg.predict``, and ``predict.py`` of
a checkout on the ``conf/`` beside it): resolve and load the checkpoints (the model shipped with the package when none
is given), find the cases, segment them with one ``Predictor`` and write, per case, a uint8 NIfTI
in the input's label convention and space, a PNG of three orthogonal views and optional
probability maps, then a ``summary.csv`` of tumour volumes and, where the input has references,
the BraTS metrics. Cases are read and preprocessed in worker processes while the previous case
runs on the device.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from tumorseg.checkpoints import could_be_name, find_model, shipped_model
from tumorseg.cli import EXIT_INCOMPLETE, EXIT_OK, OUTPUT_FULL, describe_os_error, hydra_command
from tumorseg.data.layouts import CaseError, Problem, select_cases
from tumorseg.labels import ALL_CONVENTIONS, BRATS2023, LabelSet
from tumorseg.launch import register_resolvers
from tumorseg.predict.cases import InputCase, PredictionError, explicit_case, find_cases
from tumorseg.predict.predictor import CaseReader, Predictor, PreparedCase
from tumorseg.predict.writers import write_label, write_png, write_probabilities, write_summary

log = logging.getLogger(__name__)


class _Cases(Dataset):
    """Reads and preprocesses cases in DataLoader workers; a failure becomes an error record."""

    def __init__(self, items: list[InputCase], reader: CaseReader):
        self.items = items
        self.reader = reader  # no models in the worker processes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> PreparedCase | tuple[InputCase, str]:
        item = self.items[index]
        try:
            return self.reader(item)
        except (CaseError, ValueError, OSError) as err:
            return item, str(err)


def _first(record):
    return record  # batch_size=None: each record is one case, nothing to collate


# ------------------------------------------------------------------------------------ segmenting


@dataclass
class PredictSettings:
    """What ``predict`` writes and how it reads; the models' settings are the ``Predictor``'s."""

    output_dir: Path
    save_probabilities: bool = False
    png: bool = True
    overwrite: bool = False
    workers: int = 2
    labels: str = "auto"
    progress: bool = True
    label_set: LabelSet = BRATS2023  # the models'; ``labels`` must be one of its conventions


@dataclass
class PredictReport:
    """What ``predict`` did, case by case; ``skipped`` (cases the input holds but that cannot be
    read, found before segmenting) is filled by ``run``. After an error that no later write can
    escape (a full disk), ``stopped`` says why and the cases left are ``not_attempted``."""

    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    not_attempted: list[str] = field(default_factory=list)
    stopped: str | None = None
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    summary_csv: Path | None = None

    @property
    def complete(self) -> bool:
        """Every case of the input segmented (now or before)."""
        return not (self.skipped or self.failed or self.not_attempted)


def predict(items: list[InputCase], predictor: Predictor, settings: PredictSettings) -> PredictReport:
    """Segment ``items`` with ``predictor`` and write the outputs; see the module docstring."""
    out_dir = Path(settings.output_dir)
    _check_writable(out_dir)
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
        _Cases(todo, predictor.reader), batch_size=None, num_workers=min(settings.workers, len(todo)),
        collate_fn=_first, prefetch_factor=1 if settings.workers > 0 and todo else None,
    )  # fmt: skip
    from rich.progress import Progress

    with Progress(disable=not settings.progress) as bar:
        task = bar.add_task("segmenting", total=len(todo))
        for record in loader:
            if isinstance(record, tuple):
                item, error = record
                report.failed[item.case_id] = error
                log.error("case %s failed: %s", item.case_id, error)
            else:
                item = record.item
                try:
                    report.timings[item.case_id] = _segment(record, predictor, settings, out_dir)
                    report.written.append(item.case_id)
                except (CaseError, ValueError, RuntimeError, OSError) as err:
                    report.failed[item.case_id] = describe_os_error(err) if isinstance(err, OSError) else str(err)
                    log.error("case %s failed: %s", item.case_id, report.failed[item.case_id])
                    if isinstance(err, OSError) and err.errno in OUTPUT_FULL:
                        report.stopped = f"{out_dir}: {err.strerror}"
                        break  # every later case would fail the same way
            bar.advance(task)
    if report.stopped:
        done = {*report.written, *report.failed}
        report.not_attempted = [i.case_id for i in todo if i.case_id not in done]
        log.error("Stopped: %s; %d case(s) not attempted.", report.stopped, len(report.not_attempted))
        return report  # summary.csv would not fit either

    conventions = {i.case_id: _convention(i, settings) for i in items}
    report.summary_csv = write_summary(out_dir, {c: v for c, v in conventions.items() if c not in report.failed})
    return report


def _check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and write a file there, so that an output that cannot be written stops
    ``predict`` before the first case rather than failing every case."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise PredictionError(f"output_dir={out_dir} cannot be written: {describe_os_error(err)}.") from err


def _convention(item: InputCase, settings: PredictSettings) -> str:
    """The convention a case is written in: ``labels``, or with ``auto`` the input's, where the models'
    label set has it, else the label set's first (BraTS 2024's own for a brats2024 model)."""
    if settings.labels != "auto":
        return settings.labels
    conventions = settings.label_set.conventions
    return item.convention if item.convention in conventions else next(iter(conventions))


def _segment(case: PreparedCase, predictor: Predictor, settings: PredictSettings, out_dir: Path) -> dict[str, float]:
    prediction = predictor.segment(case)
    start = time.perf_counter()
    case_id = case.item.case_id
    write_label(prediction, _convention(case.item, settings), out_dir / f"{case_id}.nii.gz")
    if settings.save_probabilities:
        write_probabilities(prediction, out_dir)
    if settings.png:
        write_png(prediction, out_dir / f"{case_id}.png")
    return {"read_s": case.read_s, "infer_s": prediction.infer_s, "write_s": time.perf_counter() - start}


# ------------------------------------------------------------------------------------ command line


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    return list(value)


def _chosen(
    items: list[InputCase], skipped: dict[str, str], spec, root: Path
) -> tuple[list[InputCase], dict[str, str]]:
    """The cases of ``items`` that ``cases=`` names, in its order, and those of ``skipped`` it names."""
    try:
        wanted = select_cases(spec)
    except ValueError as err:
        raise PredictionError(f"cases={spec}: {err}") from err
    by_id = {i.case_id: i for i in items}
    skipped = {c: why for c, why in skipped.items() if c in wanted}
    unknown = [c for c in wanted if c not in by_id and c not in skipped]
    if unknown:
        raise PredictionError(
            f"cases: {len(unknown)} case(s) are not in input={root}: {unknown[:5]}; check the input folder or the list."
        )
    return [by_id[c] for c in dict.fromkeys(wanted) if c in by_id], skipped


def _skipped(problems: list[Problem]) -> dict[str, str]:
    """The cases ``find_cases`` left out (by case id, else by file), with why."""
    skipped: dict[str, str] = {}
    for problem in problems:
        key = problem.case_id or str(problem.path or problem.message)
        skipped[key] = f"{skipped[key]}; {problem.message}" if key in skipped else problem.message
    return skipped


def build_predictor(cfg) -> Predictor:
    """The ``Predictor`` of ``predict.py``'s checkpoints (``ckpt_path``, ``ckpt_sha256``; null: the
    shipped model, verified; registered models by name), run by ``backend`` (exports by their own
    runtime); each test-time option that is null keeps every checkpoint's own setting. A registered
    model's notice is printed once."""

    specs = [] if OmegaConf.is_missing(cfg, "ckpt_path") else _as_list(cfg.ckpt_path)
    if not specs:
        shipped = shipped_model()
        print(shipped.banner(), flush=True)  # once per run: the predictor is built once
        specs = [shipped.path]
    for spec in specs:
        registered = find_model(spec) if could_be_name(spec) else None
        if registered is not None:
            print(registered.banner(), flush=True)
    return Predictor.from_checkpoints(
        specs, _as_list(cfg.get("ckpt_sha256")), progress=cfg.progress, allow_http=cfg.allow_http,
        backend=cfg.get("backend", "torch"), overlap=cfg.overlap,
        sw_batch_size=cfg.sw_batch_size, mirror=cfg.mirror, et_min_voxels=cfg.et_min_voxels,
        wt_min_fraction=cfg.wt_min_fraction, bf16=cfg.bf16,
        device=cfg.device,
    )  # fmt: skip


def run(cfg) -> int:
    """The prediction command, ``tumorseg-predict`` (``python -m tumorseg.predict``, and ``predict.py`` of
    a checkout on the ``conf/`` beside it): resolve and load the checkpoints (the shipped model when ``ckpt_path`` is
        null), find the cases, segment them, evaluate against references where the input has them;
        returns the exit status."""
    predictor = build_predictor(cfg)
    for line in predictor.describe():
        log.info("Settings of %s", line)
    needed = predictor.modalities

    labels = cfg.labels
    if labels != "auto" and labels not in ALL_CONVENTIONS:
        raise PredictionError(f"labels={labels!r}: choose auto or one of {sorted(ALL_CONVENTIONS)}.")
    label_set = predictor.label_set
    if labels != "auto" and labels not in label_set.conventions:
        raise PredictionError(
            f"labels={labels}: the model(s) predict the {label_set.name} label set "
            f"({', '.join(label_set.class_names[c] for c in label_set.classes[1:])}), which is written as "
            f"{' or '.join(label_set.conventions)} only; pass labels=auto or one of those."
        )
    if cfg.input:
        root = Path(cfg.input).expanduser()
        if root.is_file():
            raise PredictionError(
                f"input={root} is a file; give its folder, or the modality files as files.flair=... files.t1=..."
            )
        if not root.exists():
            raise PredictionError(f"input={root}: no such folder.")
        items, problems = find_cases(root, cfg.get("layout"))
        skipped = _skipped(problems)
        if cfg.get("cases"):
            items, skipped = _chosen(items, skipped, cfg.cases, root)
    else:
        skipped = {}
        files = {m: cfg.files.get(m) for m in cfg.files}
        written = next(iter(label_set.conventions))  # brats2020 for BraTS 2023 models
        items = [explicit_case(files, cfg.get("case_id"), written if labels == "auto" else labels)]
        missing = [m for m in needed if m not in items[0].files]
        if missing:
            raise PredictionError(
                f"The checkpoint(s) were trained on {needed}; {', '.join(f'files.{m}' for m in missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing."
            )
        if labels == "auto" and written == "brats2020":
            log.info(
                "Explicit files: labels written in the BraTS 2020/2021 convention (0/1/2/4); set labels= to change."
            )

    out_dir = Path(cfg.output_dir).expanduser()
    settings = PredictSettings(
        output_dir=out_dir, save_probabilities=cfg.save_probabilities, png=cfg.png, overwrite=cfg.overwrite,
        workers=cfg.workers, labels=labels, progress=cfg.progress, label_set=label_set,
    )  # fmt: skip
    started = time.perf_counter()
    report = predict(items, predictor, settings)
    report.skipped = skipped
    elapsed = time.perf_counter() - started
    print(format_report(report, out_dir, elapsed), flush=True)

    status = EXIT_OK if report.complete else EXIT_INCOMPLETE
    with_refs = [i for i in items if i.reference is not None]
    if cfg.evaluate and with_refs and cfg.input and not report.stopped:
        from tumorseg.evaluate import evaluate_folder

        # a BraTS 2024 model's outputs and references are in its own convention, which no file name tells
        written = "auto" if label_set is BRATS2023 else next(iter(label_set.conventions))
        result = evaluate_folder(
            out_dir, Path(cfg.input), labels=written, out=out_dir / "metrics.csv", progress=cfg.progress,
            cases=[i.case_id for i in items],
        )  # fmt: skip
        if result.missing or result.errors:
            status = EXIT_INCOMPLETE
    return status


def format_report(report: PredictReport, out_dir: Path, elapsed: float) -> str:
    counts = (
        f"{len(report.written)} written, {len(report.kept)} kept, {len(report.skipped)} skipped, "
        f"{len(report.failed)} failed" + (f", {len(report.not_attempted)} not attempted" if report.stopped else "")
    )
    lines = [f"Segmentations: {out_dir}  ({counts}, {elapsed:.1f} s)"]
    if report.timings:
        t = {k: float(np.median([v[k] for v in report.timings.values()])) for k in ("read_s", "infer_s", "write_s")}
        lines.append(
            f"Median per case: read+preprocess {t['read_s']:.2f} s, inference {t['infer_s']:.2f} s, write {t['write_s']:.2f} s"
        )
    for case_id, message in report.skipped.items():
        lines.append(f"SKIPPED {case_id}: {message}")
    for case_id, message in report.failed.items():
        lines.append(f"FAILED {case_id}: {message}")
    if report.stopped:
        lines.append(
            f"STOPPED: {report.stopped}; {len(report.not_attempted)} case(s) not attempted. The cases written are "
            "complete and kept: run the same command again once the output can take the rest."
        )
    if report.summary_csv:
        lines.append(f"Volumes: {report.summary_csv}")
    return "\n".join(lines)


def _task(cfg) -> None:
    """The task Hydra runs with the config composed from ``predict.yaml`` and the overrides."""
    status = run(cfg)
    if status:
        sys.exit(status)  # Hydra drops what the task returns


def main(config_path: str | None = None) -> int:
    """``tumorseg-predict ckpt_path=CKPT input=PATH output_dir=DIR``: segment scans (with the shipped
    model when ``ckpt_path`` is not given) on the installed configs, or on the config folder
    ``config_path``. Exit status: 0 every case segmented, 1 some case failed or was skipped, 2 nothing
    could start: a mistake, explained in one message (``HYDRA_FULL_ERROR=1`` adds the traceback)."""
    register_resolvers()
    return hydra_command(_task, config_name="predict", config_path=config_path)

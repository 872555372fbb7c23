"""``python experiments/benchmark.py data`` measures the training input pipeline side by side: CPU
seconds per patch of a naive TorchIO pipeline (read ``.nii.gz``, z-score, augment the whole volume,
sample) against tumorseg's (preprocessing cache, queue, tumour sampler), the cost of the batched
augmentation next to a training step, and the peak memory of the training loader.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.common import add_device_and_output, command_parser, console, device_name, emit, fmt, run_isolated
from benchmarks.step import MODES, Setup, time_step
from tumorseg.cli import positive_int
from tumorseg.models import MODELS, PRESETS


def synthetic_root(args: argparse.Namespace) -> Path:
    """``--root``, or BraTS-sized synthetic phantoms generated once under ``--work-dir``."""
    if args.root is not None:
        return args.root
    from tumorseg.phantoms import generate_dataset

    root = args.work_dir / f"synthetic-{args.cases}x240x240x155"
    generate_dataset(root, args.cases, seed=0, shape=(240, 240, 155), workers=2, progress=True)
    return root


def naive_pipeline_seconds(cases, patch: int, samples_per_volume: int, bias_field: bool) -> float:
    """CPU seconds per patch of the naive TorchIO pipeline, in one process.

    Reads the ``.nii.gz`` files, z-scores, augments the whole volume on the CPU and samples a
    label-centred patch, as a first TorchIO training script does. TorchIO's ``RandomBiasField``
    alone costs over 15 CPU s per 240x240x155x4 case here, so it is left out unless
    ``bias_field``: the speed-up reported by default is the conservative one.
    """
    import torchio as tio

    from tumorseg.labels import MODALITIES

    subjects = [
        tio.Subject(
            **{m: tio.ScalarImage(p) for m, p in zip(MODALITIES, case.images)},
            label=tio.LabelMap(case.label),
        )
        for case in cases
    ]
    transform = tio.Compose(
        [
            tio.ZNormalization(),
            tio.RandomFlip(axes=(0, 1, 2)),
            tio.RandomAffine(),
            tio.RandomGamma(),
            tio.RandomNoise(),
            *([tio.RandomBiasField()] if bias_field else []),
        ]
    )
    torch.set_num_threads(1)  # CPU work per core, as a loader worker does it
    dataset = tio.SubjectsDataset(subjects, transform=transform)
    queue = tio.Queue(
        dataset,
        max_length=samples_per_volume,
        samples_per_volume=samples_per_volume,
        sampler=tio.LabelSampler(patch, label_name="label"),
        num_workers=0,
    )
    count = len(queue)
    start = time.process_time()
    for i in range(count):
        queue[i]
    return (time.process_time() - start) / count


def cached_pipeline_seconds(entries, patch: int, samples_per_volume: int) -> float:
    """CPU seconds per patch of tumorseg's pipeline: cache, queue and sampler, in one process."""
    from tumorseg.data.datamodule import PatchStream

    torch.set_num_threads(1)  # CPU work per core, as a loader worker does it
    stream = PatchStream(
        entries,
        patch_size=patch,
        batch_size=1,
        samples_per_volume=samples_per_volume,
        queue_length=samples_per_volume,
        num_workers=0,
        foreground_share=0.33,
        uniform=False,
    )
    start = time.process_time()
    count = sum(1 for _ in stream)
    return (time.process_time() - start) / count


def tree_pss_gib(pid: int) -> float:
    """Proportional set size of a process and its descendants (shared pages counted once)."""
    total_kib, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
            total_kib += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):  # the process ended meanwhile
            continue
    return total_kib / 2**20


def loader_peak_memory(
    entries, patch: int, batch: int, samples_per_volume: int, queue_length: int, workers: int
) -> dict:
    """Peak memory of the training loader (this process and its workers) over one epoch."""
    from tumorseg.data.datamodule import PatchStream

    stream = PatchStream(
        entries,
        patch_size=patch,
        batch_size=batch,
        samples_per_volume=samples_per_volume,
        queue_length=queue_length,
        num_workers=workers,
        foreground_share=0.33,
        uniform=False,
    )
    peak, done = [tree_pss_gib(os.getpid())], threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            peak.append(tree_pss_gib(os.getpid()))

    baseline = peak[0]
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    patches = sum(1 for _ in stream)
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    return {"peak_gib": max(peak), "baseline_gib": baseline, "patches": patches, "patches_per_s": patches / seconds}


def cmd_data(args: argparse.Namespace) -> None:
    from tumorseg.data.cache import PreprocessConfig, build_cache
    from tumorseg.data.layouts import discover

    root = synthetic_root(args)
    discovery = discover(root, require_labels=True)
    cases = discovery.cases[: args.cases]
    # a fresh cache each run, so that its one-off build is timed too
    args.work_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(tempfile.mkdtemp(prefix="cache-", dir=args.work_dir))
    start = time.perf_counter()
    cache = build_cache(dataclasses.replace(discovery, cases=cases, problems=[]), cache_dir, PreprocessConfig())
    build_s = (time.perf_counter() - start) / max(cache.built, 1)
    if cache.problems:
        sys.exit("error: the dataset has problems:\n" + "\n".join(map(str, cache.problems)))
    hardware = device_name(args.device)
    try:
        rows, records = measure_pipelines(args, hardware, cases, cache, build_s)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    table = Table(
        title=f"{hardware}: input pipeline, {len(cases)} cases of {root.name}",
        caption="CPU s per patch: one thread, in process. Loader memory: proportional set size of the main process "
        "and its workers; beyond the data bound it is the workers' own interpreters.",
    )
    for column in ("measure", "setting", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in rows:
        table.add_row(*row)
    console().print(table)
    emit(records, args.jsonl)


def measure_pipelines(args: argparse.Namespace, hardware: str, cases, cache, build_s: float) -> tuple[list, list[dict]]:
    from tumorseg.data.augment import augment_cost

    log = Console(stderr=True)
    rows, records = [], []
    meta = {"benchmark": "data", "cases": len(cases), "patch": args.patch, "device_name": hardware,
            "torch": torch.__version__, "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    for spv in args.samples_per_volume:
        with log.status(f"naive TorchIO pipeline, samples_per_volume={spv}"):
            naive = run_isolated(naive_pipeline_seconds, cases, args.patch, spv, args.naive_bias_field)
        with log.status(f"cache + queue, samples_per_volume={spv}"):
            ours = run_isolated(cached_pipeline_seconds, cache.entries, args.patch, spv)
        ratio = None if isinstance(naive, dict) or isinstance(ours, dict) else naive / ours
        naive_name = "naive TorchIO" + ("" if args.naive_bias_field else " (no RandomBiasField)")
        for name, value in ((naive_name, naive), ("tumorseg cache + queue", ours)):
            error = value.get("error") if isinstance(value, dict) else None
            records.append({**meta, "measure": "cpu_s_per_patch", "pipeline": name, "samples_per_volume": spv,
                            "value": None if error else value, "error": error})  # fmt: skip
            rows.append((f"CPU s per {args.patch}^3 patch", f"{name}, samples_per_volume={spv}",
                         "failed: " + error if error else f"{value:.4f}"))  # fmt: skip
        rows.append(("speed-up of the cache over naive", f"samples_per_volume={spv}", fmt(ratio, ".1f") + "x"))
        records.append({**meta, "measure": "speedup", "samples_per_volume": spv, "value": ratio})
    rows.append(("cache build, s per case (once)", f"{cache.built} cases", f"{build_s:.2f}"))
    records.append({**meta, "measure": "cache_build_s_per_case", "value": build_s})

    with log.status("augmentation of one batch"):
        aug = run_isolated(augment_cost, args.device, args.batch, 4, args.patch, args.augmentation)
    setup = Setup(args.step_model, args.step_preset, args.batch, args.patch, 4, 3, args.device)
    with log.status(f"training step of {args.step_model} ({args.step_preset}, {args.step_mode})"):
        step = run_isolated(time_step, setup, args.step_mode, 3, 2)
    share = None if "error" in aug or "error" in step else 100 * aug["median_ms"] / step["ms"]
    shape = f"{args.batch}x4x{args.patch}^3"
    rows.append(
        (f"augmentation ({args.augmentation}), ms per {shape} batch", args.device, fmt(aug.get("median_ms"), ".1f"))
    )
    rows.append(
        ("training step, ms", f"{args.step_model} {args.step_preset} {args.step_mode}", fmt(step.get("ms"), ".1f"))
    )
    rows.append(("augmentation / step", "", fmt(share, ".1f") + " %"))
    records.append({**meta, "measure": "augmentation_ms", "value": aug.get("median_ms"), "error": aug.get("error")})
    records.append(
        {**meta, "measure": "step_ms", "model": args.step_model, "value": step.get("ms"), "error": step.get("error")}
    )
    records.append({**meta, "measure": "augmentation_share_percent", "value": share})

    with log.status(f"training loader with {args.workers} workers"):
        mem = run_isolated(loader_peak_memory, cache.entries, args.patch, args.batch, max(args.samples_per_volume),
                           args.queue_length, args.workers)  # fmt: skip
    patch_gib = (4 * 2 + 1) * args.patch**3 / 2**30  # float16 image + uint8 label
    case_gib = max((4 * 2 + 1) * np.prod(e.shape) for e in cache.entries) / 2**30
    bound = args.queue_length * patch_gib + args.workers * 2 * case_gib  # queue + 2 cases prefetched per worker
    setting = (
        f"{mem.get('baseline_gib', 0):.2f} GiB before; data bound {args.queue_length} patches + "
        f"{args.workers} x 2 cases = {bound:.2f} GiB"
    )
    rows.append(
        (f"loader peak memory (PSS), main + {args.workers} workers, GiB", setting, fmt(mem.get("peak_gib"), ".2f"))
    )
    records.append({**meta, "measure": "loader_peak_gib", "workers": args.workers, "queue_length": args.queue_length,
                    "data_bound_gib": bound, **mem})  # fmt: skip

    return rows, records


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = command_parser(
        commands, "data", "the training input pipeline: naive TorchIO vs the cache, augmentation", __doc__
    )
    parser.add_argument("--root", type=Path, help="a labelled dataset; default: synthetic 240x240x155 phantoms")
    parser.add_argument("--cases", type=positive_int, default=4, help="cases to use (and to generate)")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/benchmark/data"), help="phantoms and cache")
    parser.add_argument("--patch", type=positive_int, default=128)
    parser.add_argument("--batch", type=positive_int, default=2)
    parser.add_argument("--samples-per-volume", type=positive_int, nargs="+", default=[1, 8])
    parser.add_argument("--augmentation", default="default", help="augmentation preset")
    parser.add_argument(
        "--naive-bias-field", action="store_true", help="add TorchIO's (slow) RandomBiasField to the naive pipeline"
    )
    parser.add_argument(
        "--step-model", default="linknet3d", choices=sorted(MODELS), help="network the augmentation is compared with"
    )
    parser.add_argument("--step-preset", default="paper", choices=PRESETS)
    parser.add_argument("--step-mode", default="bf16", choices=list(MODES))
    parser.add_argument("--workers", type=positive_int, default=8, help="loader workers for the memory measurement")
    parser.add_argument("--queue-length", type=positive_int, default=24)
    add_device_and_output(parser)
    parser.set_defaults(run=cmd_data)

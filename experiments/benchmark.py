"""Speed and memory benchmark of the segmentation networks.

``python experiments/benchmark.py step --model arunet3d`` times one optimiser step (forward, loss,
backward, RMSprop step, ``zero_grad``) of a network in several modes side by side:

* ``fp32``: fp32 eager, as the published code trained;
* ``bf16``: bfloat16 autocast;
* ``bf16-cl``: bfloat16 autocast with the model and the input in ``channels_last_3d``;
* ``bf16-compile``: as ``bf16-cl`` plus ``torch.compile(model)``; only with ``--compile`` (slow to
  start) or when listed in ``--modes``.

Each mode runs in its own spawned process on a freshly built model with the same seed, so that
peak memory and compile caches do not leak from one mode to the next; a mode that fails (out of
memory, no compiler) is reported and the other modes still run. The input is random noise and the
target random 0/1 region masks; the loss is a binary cross-entropy computed in fp32, whose cost is
negligible next to the network's. The step's FLOPs (forward + backward, a multiply-add counting as
2 FLOPs, as in ``tumorseg.models.summary``) are counted once on the meta device. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and, on CPU, the peak resident memory of the mode's
process, which includes the interpreter and torch themselves (a few hundred MiB).

The results are printed as a table, then as one JSON object per mode (or appended to ``--jsonl``).
``python experiments/benchmark.py report FILE.jsonl ...`` prints one table of several such runs.

``python experiments/benchmark.py data`` measures the training input pipeline side by side: CPU
seconds per patch of a naive TorchIO pipeline (read ``.nii.gz``, z-score, augment the whole volume,
sample) against tumorseg's (preprocessing cache, queue, tumour sampler), the cost of the batched
augmentation next to a training step, and the peak memory of the training loader.

``python experiments/benchmark.py infer --model arunet3d`` times whole-case sliding-window inference
of one random 4-channel case, side by side in one process: ``tumorseg.inference.sliding_window_logits``
(MONAI's ``sliding_window_inference``, Gaussian blending, stitched on the device), which validation
and prediction use, against TorchIO's ``GridSampler`` + ``GridAggregator(overlap_mode="hann")``, whose
Hann window is the closest of TorchIO's blendings to the Gaussian; TorchIO cuts the windows and
stitches them on the CPU. Both run in this one process, alternately, after one warm-up each; the
thresholded outputs are compared (they differ slightly where windows overlap, as the blending
windows differ). Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and, on CPU, the growth
of the process's peak resident memory during the run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tumorseg.models import MODELS, PRESETS, build_model

SEED = 0
LR = 1e-4  # the paper's RMSprop learning rate


@dataclass(frozen=True)
class Mode:
    autocast: bool
    channels_last: bool
    compile: bool


MODES = {
    "fp32": Mode(autocast=False, channels_last=False, compile=False),
    "bf16": Mode(autocast=True, channels_last=False, compile=False),
    "bf16-cl": Mode(autocast=True, channels_last=True, compile=False),
    "bf16-compile": Mode(autocast=True, channels_last=True, compile=True),
}
DEFAULT_MODES = ("fp32", "bf16", "bf16-cl")


@dataclass(frozen=True)
class Setup:
    """The network and the input size shared by all modes of a run (sent to the workers)."""

    model: str
    preset: str
    batch: int
    patch: int
    in_channels: int
    out_channels: int
    device: str

    def build(self) -> nn.Module:
        return build_model(self.model, self.preset, in_channels=self.in_channels, out_channels=self.out_channels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, self.patch, self.patch, self.patch)

    @property
    def target_shape(self) -> tuple[int, ...]:
        return (self.batch, self.out_channels, self.patch, self.patch, self.patch)


# ---------------------------------------------------------------- shared by all subcommands


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        cpuinfo = []
    names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or "unknown CPU"
    return f"{cpu}, {torch.get_num_threads()} threads"


def peak_rss_gib() -> float:
    """Peak resident memory of this process.

    Linux's VmHWM belongs to this process alone; ``ru_maxrss`` would inherit the high-water mark
    of the parent that the spawn start method forks from.
    """
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # not Linux
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":  # bytes there
            kib //= 1024
    return kib / 2**20


def run_isolated(measure, *args) -> dict:
    """Return the dict ``measure(*args)``, computed in a fresh spawned process, or ``{"error": ...}``."""
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=send_result, args=(sender, measure, *args))
    process.start()
    sender.close()  # the worker holds the only sending end now, so recv() fails instead of hanging if it dies
    try:
        result = receiver.recv()
    except EOFError:  # killed before it could answer, e.g. by the kernel's OOM killer
        result = None
    process.join()
    return result if result is not None else {"error": f"worker process died with exit code {process.exitcode}"}


def send_result(conn, measure, *args) -> None:
    """Worker side of ``run_isolated``: send ``measure(*args)``, or the error that stopped it."""
    try:
        result = measure(*args)
    except Exception as err:  # a failing mode is reported and the other modes still run
        result = {"error": f"{type(err).__name__}: {err}"}
    conn.send(result)
    conn.close()


def emit(records: list[dict], jsonl: Path | None) -> None:
    lines = "".join(json.dumps(record) + "\n" for record in records)
    if jsonl is None:
        sys.stdout.write(lines)
        return
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    with jsonl.open("a") as f:
        f.write(lines)


def console() -> Console:
    # rich wraps to 80 columns when stdout is not a terminal; tables are wider than that
    return Console(width=None if sys.stdout.isatty() else 160)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# ---------------------------------------------------------------- step: one optimiser step


def region_loss(out: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
    outputs = out if isinstance(out, tuple) else (out,)  # PSPNet3D with aux_head returns (logits, aux)
    return sum(F.binary_cross_entropy_with_logits(o.float(), target) for o in outputs)


def step_flops(model: nn.Module, setup: Setup) -> int:
    """FLOPs of one training step, forward and backward, counted on the meta device (``model`` moves there)."""
    model = model.to("meta")
    x = torch.empty(setup.input_shape, device="meta")
    target = torch.empty(setup.target_shape, device="meta")
    with FlopCounterMode(display=False) as counter:
        region_loss(model(x), target).backward()
    return counter.get_total_flops()


def time_step(setup: Setup, mode_name: str, steps: int, warmup: int) -> dict:
    mode = MODES[mode_name]
    device = torch.device(setup.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # the shapes never change, so autotuning pays off
    memory_format = torch.channels_last_3d if mode.channels_last else torch.contiguous_format

    torch.manual_seed(SEED)
    model = setup.build().to(device, memory_format=memory_format)
    x = torch.randn(setup.input_shape, device=device).contiguous(memory_format=memory_format)
    target = torch.randint(0, 2, setup.target_shape, device=device).float().contiguous(memory_format=memory_format)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=LR)
    net = torch.compile(model) if mode.compile else model

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode.autocast):
            out = net(x)
        region_loss(out, target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):  # also compiles and autotunes, so neither is timed
        step()
    seconds = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else peak_rss_gib()
    return {"ms": statistics.median(seconds) * 1e3, "ms_min": min(seconds) * 1e3, "peak_mem_gib": peak}


def step_record(setup: Setup, result: dict, flops: int, fp32_ms: float | None) -> dict:
    ms = result.get("ms")

    def per_second(amount: float) -> float | None:
        return None if ms is None else amount / (ms / 1e3)

    return {
        "ms": ms,
        "ms_min": result.get("ms_min"),
        "patches_per_s": per_second(setup.batch),
        "mvox_per_s": per_second(setup.batch * setup.patch**3 / 1e6),
        "tflop_per_step": flops / 1e12,
        "tflop_per_s": per_second(flops / 1e12),
        "peak_mem_gib": result.get("peak_mem_gib"),
        "speedup_vs_fp32": None if ms is None or fp32_ms is None else fp32_ms / ms,
        "error": result.get("error"),
    }


def step_table(title: str, caption: str, records: list[dict]) -> Table:
    table = Table(title=title, caption=caption)
    table.add_column("mode")
    for column in ("ms/step", "patches/s", "Mvox/s", "TFLOP/s", "peak GiB", "speed-up"):
        table.add_column(column, justify="right")
    for r in records:
        table.add_row(
            r["mode"],
            "failed" if r["error"] else fmt(r["ms"], ".1f"),
            fmt(r["patches_per_s"], ".2f"),
            fmt(r["mvox_per_s"], ".3f"),
            fmt(r["tflop_per_s"], ".3f"),
            fmt(r["peak_mem_gib"], ".2f"),
            fmt(r["speedup_vs_fp32"], ".2f") + ("" if r["speedup_vs_fp32"] is None else "x"),
        )
    return table


def cmd_step(args: argparse.Namespace) -> None:
    setup = Setup(args.model, args.preset, args.batch, args.patch, args.in_channels, args.out_channels, args.device)
    # built on the CPU: initialising the weights on the meta device would import torch._dynamo (seconds)
    model = setup.build()
    if setup.patch < model.min_input_size:
        sys.exit(
            f"error: --patch {setup.patch} is too small for {setup.model}; the minimum is --patch {model.min_input_size}."
        )
    flops = step_flops(model, setup)
    modes = list(dict.fromkeys([*(args.modes or DEFAULT_MODES), *(["bf16-compile"] if args.compile else [])]))

    log = Console(stderr=True)
    results = {}
    for i, name in enumerate(modes, 1):
        with log.status(f"[{i}/{len(modes)}] {name}: {args.warmup} warm-up and {args.steps} timed steps"):
            results[name] = run_isolated(time_step, setup, name, args.steps, args.warmup)
        error = results[name].get("error")
        summary = f"failed, {error.splitlines()[0]}" if error else f"{results[name]['ms']:.1f} ms/step"
        log.print(f"{name}: {summary}", markup=False, highlight=False)

    hardware = device_name(setup.device)
    meta = {
        "benchmark": "step",
        "model": setup.model,
        "preset": setup.preset,
        "batch": setup.batch,
        "patch": setup.patch,
        "in_channels": setup.in_channels,
        "out_channels": setup.out_channels,
        "steps": args.steps,
        "warmup": args.warmup,
        "device": setup.device,
        "device_name": hardware,
        "torch": torch.__version__,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    fp32_ms = results.get("fp32", {}).get("ms")
    records = [{**meta, "mode": m, **step_record(setup, r, flops, fp32_ms)} for m, r in results.items()]

    title = (
        f"{hardware}: {setup.model} ({setup.preset}), batch {setup.batch}, patch {setup.patch}^3, "
        f"{setup.in_channels} -> {setup.out_channels} channels"
    )
    memory = "max_memory_allocated" if setup.device == "cuda" else "peak RSS of the mode's process"
    caption = (
        f"{flops / 1e12:.4g} TFLOP per step (forward + backward); median of {args.steps} steps "
        f"after {args.warmup} warm-up; peak memory = {memory}"
    )
    out = console()
    out.print(step_table(title, caption, records))
    for r in records:
        if r["error"]:
            out.print(f"[red]{r['mode']} failed:[/red] {escape(r['error'].splitlines()[0])}", highlight=False)
    emit(records, args.jsonl)


# ---------------------------------------------------------------- data: the training input pipeline


def synthetic_root(args: argparse.Namespace) -> Path:
    """``--root``, or BraTS-sized synthetic phantoms generated once under ``--work-dir``."""
    if args.root is not None:
        return args.root
    from tumorseg.data.synthetic import generate_dataset

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
    import threading

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


# ---------------------------------------------------------------- infer: sliding-window inference, MONAI vs TorchIO

BACKENDS = {  # name: (blending, where the windows are stitched)
    "monai": ("gaussian", "device"),
    "torchio": ("hann", "cpu"),
}


@dataclass(frozen=True)
class InferSetup:
    """The network, the case and the window settings shared by both backends."""

    model: str
    preset: str
    shape: tuple[int, int, int]
    roi: int
    overlap: float
    sw_batch: int
    bf16: bool
    mirror: bool
    device: str
    in_channels: int = 4
    out_channels: int = 3

    def build(self) -> nn.Module:
        return build_model(self.model, self.preset, in_channels=self.in_channels, out_channels=self.out_channels)

    @property
    def interval(self) -> int:
        """MONAI's step between windows (``monai.inferers.utils._get_scan_interval``)."""
        return max(int(self.roi * (1 - self.overlap)), 1)

    @property
    def torchio_overlap(self) -> int:
        """TorchIO's ``patch_overlap`` in voxels: MONAI's, rounded down to the even number TorchIO needs."""
        overlap = self.roi - self.interval
        return overlap - overlap % 2

    def monai_windows(self) -> int:
        return int(np.prod([(max(s - self.roi, 0) + self.interval - 1) // self.interval + 1 for s in self.shape]))

    def torchio_windows(self) -> int:
        step = self.roi - self.torchio_overlap
        return int(np.prod([len(set(range(0, s - self.roi + 1, step)) | {s - self.roi}) for s in self.shape]))


def trim_heap() -> None:
    """Hand the C heap's free memory back to the kernel (glibc), so that RSS growth is not hidden by reuse."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def proc_status_kib(field: str) -> int | None:
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))
    except (OSError, StopIteration):  # not Linux
        return None


class HostPeak:
    """Growth of this process's resident memory during a ``with`` block, in GiB (``gib``; None off Linux).

    The kernel's high-water mark is reset on entry (``/proc/self/clear_refs``); where that is not
    allowed, resident memory is sampled every 5 ms instead.
    """

    def __enter__(self) -> HostPeak:
        trim_heap()
        self.base = proc_status_kib("VmRSS")
        self.gib: float | None = None
        self.samples: list[int] = []
        self.done = threading.Event()
        self.sampler = None
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
            if self.base is not None:
                self.sampler = threading.Thread(target=self.sample, daemon=True)
                self.sampler.start()
        return self

    def sample(self) -> None:
        while not self.done.wait(0.005):
            self.samples.append(proc_status_kib("VmRSS") or 0)

    def __exit__(self, *exc) -> None:
        self.done.set()
        if self.sampler is not None:
            self.sampler.join()
        if self.base is None:
            return
        peak = proc_status_kib("VmHWM") if self.reset else max([*self.samples, proc_status_kib("VmRSS") or 0])
        self.gib = max((peak or 0) - self.base, 0) / 2**20


def torchio_logits(network: nn.Module, image: torch.Tensor, setup: InferSetup, device: torch.device) -> torch.Tensor:
    """TorchIO's dense inference over ``image`` (M, X, Y, Z) on the CPU: float32 logits (C, X, Y, Z) on the CPU.

    Windows are cut on the CPU by ``GridSampler`` and batched by TorchIO's ``SubjectsLoader`` (a
    ``DataLoader`` with TorchIO's collate, no workers), run on ``device`` and blended on the CPU by
    ``GridAggregator(overlap_mode="hann")``; mirroring as ``sliding_window_logits`` does it.
    """
    import torchio as tio

    from tumorseg.inference import mirror_sets

    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if setup.bf16 else contextlib.nullcontext()
    flips = [tuple(axis - 1 for axis in axes) for axes in mirror_sets(setup.mirror)]  # no batch axis here
    total = None
    with torch.no_grad():
        for axes in flips:
            subject = tio.Subject(image=tio.ScalarImage(tensor=image.flip(axes) if axes else image))
            sampler = tio.GridSampler(subject, patch_size=setup.roi, patch_overlap=setup.torchio_overlap)
            aggregator = tio.GridAggregator(sampler, overlap_mode="hann")
            for batch in tio.SubjectsLoader(sampler, batch_size=setup.sw_batch):
                windows = batch["image"][tio.DATA].to(device, non_blocking=True)
                with autocast:
                    out = network(windows)
                aggregator.add_batch(out.float(), batch[tio.LOCATION])
            logits = aggregator.get_output_tensor()
            logits = logits.flip(axes) if axes else logits
            total = logits if total is None else total.add_(logits)
    return total / len(flips) if len(flips) > 1 else total


def agreement(monai: torch.Tensor, torchio: torch.Tensor) -> dict:
    """How far the two backends' logits (C, X, Y, Z) agree once turned into masks."""
    a, b = monai > 0, torchio > 0  # region masks: sigmoid > 0.5
    union = (a | b).sum().item()
    return {
        "threshold_agreement": (a == b).float().mean().item(),
        "threshold_dice": None if union == 0 else 2 * (a & b).sum().item() / (a.sum().item() + b.sum().item()),
        "argmax_agreement": (monai.argmax(0) == torchio.argmax(0)).float().mean().item(),
        "max_abs_logit_diff": (monai - torchio).abs().max().item(),
    }


def time_inference(setup: InferSetup, repeats: int) -> dict:
    """Warm up, then time both backends alternately in this process; per-backend medians, peaks and agreement."""
    from tumorseg.inference import InferenceConfig, sliding_window_logits

    device = torch.device(setup.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # one window shape, so autotuning pays off
    torch.manual_seed(SEED)
    network = setup.build().to(device).eval()
    case = torch.randn((1, setup.in_channels, *setup.shape), generator=torch.Generator().manual_seed(SEED))
    image = case.to(device)  # MONAI's input, on the device
    config = InferenceConfig(setup.roi, setup.overlap, setup.sw_batch, "gaussian", setup.mirror, setup.bf16)
    runs = {
        "monai": lambda: sliding_window_logits(network, image, config)[0],
        "torchio": lambda: torchio_logits(network, case[0], setup, device),  # TorchIO's subjects live on the CPU
    }

    def measure(name: str) -> tuple[float, float | None, float | None, torch.Tensor]:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with HostPeak() as host:
            start = time.perf_counter()
            out = runs[name]()
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        gpu = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        return seconds, gpu, host.gib, out

    results: dict[str, dict] = {name: {"seconds": [], "gpu": [], "host": []} for name in runs}
    outputs = {}
    for name in runs:  # warm-up; its outputs are compared
        try:
            outputs[name] = measure(name)[3].cpu()
        except Exception as err:  # e.g. out of memory: the other backend still runs
            results[name]["error"] = f"{type(err).__name__}: {err}"
            if cuda:
                torch.cuda.empty_cache()
    live = [name for name in runs if "error" not in results[name]]
    compared = agreement(outputs["monai"], outputs["torchio"]) if len(outputs) == 2 else {}
    outputs.clear()
    for i in range(repeats):
        for name in live if i % 2 == 0 else live[::-1]:  # alternate the order to spread the machine's noise
            seconds, gpu, host, out = measure(name)
            del out
            results[name]["seconds"].append(seconds)
            results[name]["gpu"].append(gpu)
            results[name]["host"].append(host)
    summary = {}
    for name, r in results.items():
        if "error" in r:
            summary[name] = {"error": r["error"]}
            continue
        host = None if None in r["host"] else max(r["host"])
        summary[name] = {
            "s": statistics.median(r["seconds"]),
            "s_min": min(r["seconds"]),
            "peak_mem_gib": max(r["gpu"]) if cuda else host,
            "host_rss_growth_gib": host,
        }
    return {"backends": summary, "agreement": compared}


def infer_table(title: str, caption: str, records: list[dict]) -> Table:
    table = Table(title=title, caption=caption)
    for column in ("backend", "blending", "stitched on"):
        table.add_column(column)
    for column in ("windows", "s/case", "min s", "peak GiB", "host RSS growth GiB", "time vs MONAI", "mem vs MONAI"):
        table.add_column(column, justify="right")
    for r in records:
        table.add_row(
            r["backend"],
            r["blending"],
            r["stitched_on"],
            str(r["windows"]),
            "failed" if r["error"] else fmt(r["s"], ".2f"),
            fmt(r["s_min"], ".2f"),
            fmt(r["peak_mem_gib"], ".3f"),
            fmt(r["host_rss_growth_gib"], ".3f"),
            fmt(r["time_ratio_vs_monai"], ".2f") + ("" if r["time_ratio_vs_monai"] is None else "x"),
            fmt(r["mem_ratio_vs_monai"], ".2f") + ("" if r["mem_ratio_vs_monai"] is None else "x"),
        )
    return table


def cmd_infer(args: argparse.Namespace) -> None:
    setup = InferSetup(args.model, args.preset, tuple(args.shape), args.roi, args.overlap, args.sw_batch, args.bf16,
                       args.mirror, args.device)  # fmt: skip
    if not 0 <= setup.overlap < 1:
        sys.exit(f"error: --overlap must lie in [0, 1), got {setup.overlap}.")
    if setup.roi > min(setup.shape):
        sys.exit(f"error: --roi {setup.roi} is larger than the case {setup.shape}; TorchIO's GridSampler does not pad.")
    least = setup.build().min_input_size
    if setup.roi < least:
        sys.exit(f"error: --roi {setup.roi} is too small for {setup.model}; the minimum is --roi {least}.")

    shape = "x".join(map(str, setup.shape))
    # in this process, without a spinner thread competing with TorchIO's Python-side work
    Console(stderr=True).print(
        f"{setup.model} on a {shape} case: 1 warm-up and {args.repeats} timed runs of each backend, alternating",
        highlight=False,
    )
    result = time_inference(setup, args.repeats)

    hardware = device_name(setup.device)
    meta = {
        "benchmark": "infer",
        "model": setup.model,
        "preset": setup.preset,
        "shape": list(setup.shape),
        "in_channels": setup.in_channels,
        "out_channels": setup.out_channels,
        "roi": setup.roi,
        "overlap": setup.overlap,
        "torchio_patch_overlap": setup.torchio_overlap,
        "sw_batch": setup.sw_batch,
        "bf16": setup.bf16,
        "mirror": setup.mirror,
        "repeats": args.repeats,
        "warmup": 1,
        "device": setup.device,
        "device_name": hardware,
        "peak_mem": "max_memory_allocated" if setup.device == "cuda" else "peak RSS growth",
        "torch": torch.__version__,
        "monai_version": version("monai"),
        "torchio_version": version("torchio"),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **result["agreement"],
    }
    base = result["backends"]["monai"]
    windows = {"monai": setup.monai_windows(), "torchio": setup.torchio_windows()}

    def ratio(r: dict, key: str) -> float | None:
        return None if r.get(key) is None or not base.get(key) else r[key] / base[key]

    records = []
    for name, r in result["backends"].items():
        blending, stitched = BACKENDS[name]
        records.append(
            {
                **meta,
                "backend": name,
                "blending": blending,
                "stitched_on": stitched,
                "windows": windows[name],
                "s": r.get("s"),
                "s_min": r.get("s_min"),
                "peak_mem_gib": r.get("peak_mem_gib"),
                "host_rss_growth_gib": r.get("host_rss_growth_gib"),
                "time_ratio_vs_monai": ratio(r, "s"),
                "mem_ratio_vs_monai": ratio(r, "peak_mem_gib"),
                "error": r.get("error"),
            }
        )

    extras = " + mirroring (8 flips)" * setup.mirror + ", bf16 autocast" * setup.bf16
    title = (
        f"{hardware}: {setup.model} ({setup.preset}) sliding-window inference of one {setup.in_channels}x{shape} "
        f"case, window {setup.roi}^3, overlap {setup.overlap} ({setup.torchio_overlap} voxels for TorchIO), "
        f"{setup.sw_batch} windows per batch{extras}"
    )
    memory = (
        "torch.cuda.max_memory_allocated (the weights and the case on the GPU included for both; TorchIO's output "
        "lies in host memory)"
        if setup.device == "cuda"
        else "growth of the process's peak RSS"
    )
    compared = result["agreement"]
    agree = (
        f"thresholded outputs (logit > 0) agree on {100 * compared['threshold_agreement']:.2f} % of voxels "
        f"(Dice {fmt(compared['threshold_dice'], '.4f')}), argmax on {100 * compared['argmax_agreement']:.2f} %; "
        f"max |logit difference| {compared['max_abs_logit_diff']:.3g}"
        if compared
        else "outputs not compared: a backend failed"
    )
    caption = (
        f"Median of {args.repeats} runs per backend after 1 warm-up, alternating. TorchIO: GridSampler + "
        f"SubjectsLoader + GridAggregator(overlap_mode='hann'), the closest TorchIO blending to MONAI's Gaussian. "
        f"Peak memory = {memory}. {agree}."
    )
    out = console()
    out.print(infer_table(title, caption, records))
    for r in records:
        if r["error"]:
            out.print(f"[red]{r['backend']} failed:[/red] {escape(r['error'].splitlines()[0])}", highlight=False)
    speed = records[-1]["time_ratio_vs_monai"]
    if speed is not None:
        verdict = (
            f"faster here by {speed:.2f}x"
            if speed >= 1
            else f"slower here by {1 / speed:.2f}x than TorchIO's GridSampler + GridAggregator"
        )
        out.print(f"predict.py uses MONAI's sliding window ({verdict})", highlight=False)
    emit(records, args.jsonl)


# ---------------------------------------------------------------- report: several runs in one table


def cmd_report(args: argparse.Namespace) -> None:
    records = []
    for path in args.files:
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            sys.exit(f"error: cannot read {path}: {err.strerror}.")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                sys.exit(f"error: {path}, line {n} is not JSON ({err.msg}); pass the --jsonl files of this benchmark.")
    records = [r for r in records if r.get("benchmark") == "step"]
    if not records:
        sys.exit(f"error: no step records in {', '.join(map(str, args.files))}.")

    header = ["model", "preset", "batch x patch", "mode", "ms/step", "patches/s", "TFLOP/s"]
    header += ["% of peak"] * bool(args.peak_tflops) + ["peak GiB", "speed-up"]
    rows = []
    for r in records:
        share = None if r["tflop_per_s"] is None or not args.peak_tflops else 100 * r["tflop_per_s"] / args.peak_tflops
        speedup = r["speedup_vs_fp32"]
        rows.append(
            [
                r["model"],
                r["preset"],
                f"{r['batch']}x{r['in_channels']}x{r['patch']}^3",
                r["mode"],
                "failed" if r["error"] else fmt(r["ms"], ".1f"),
                fmt(r["patches_per_s"], ".2f"),
                fmt(r["tflop_per_s"], ".3f"),
                *([fmt(share, ".1f")] if args.peak_tflops else []),
                fmt(r["peak_mem_gib"], ".2f"),
                fmt(speedup, ".2f") + ("" if speedup is None else "x"),
            ]
        )
    title = "one optimiser step, " + "; ".join(sorted({r["device_name"] for r in records}))
    text_columns = {"model", "preset", "mode"}
    if args.markdown:
        print(f"{title}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" if h in text_columns else "---:" for h in header) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h in text_columns else "right")
    for row in rows:
        table.add_row(*row)
    console().print(table)


# ---------------------------------------------------------------- command line


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def resolve_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was given but no CUDA device is available.")
    return choice


def main(argv: list[str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, choices=sorted(MODELS))
    common.add_argument("--preset", default="light", choices=PRESETS)
    common.add_argument("--patch", type=positive_int, default=128, help="edge of the cubic input patch (voxels)")
    common.add_argument("--batch", type=positive_int, default=2)
    common.add_argument("--in-channels", type=positive_int, default=4)
    common.add_argument("--out-channels", type=positive_int, default=3)
    common.add_argument("--modes", nargs="+", choices=list(MODES), help=f"default: {' '.join(DEFAULT_MODES)}")
    common.add_argument("--compile", action="store_true", help="also run bf16-compile")
    common.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    common.add_argument("--jsonl", type=Path, help="append the JSON lines to this file instead of printing them")

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    step = commands.add_parser("step", parents=[common], help="time one optimiser step")
    step.add_argument("--steps", type=positive_int, default=10, help="timed steps")
    step.add_argument("--warmup", type=positive_int, default=3, help="untimed steps first (they cover compilation)")
    step.set_defaults(run=cmd_step)
    data = commands.add_parser("data", help="the training input pipeline: naive TorchIO vs the cache, augmentation")
    data.add_argument("--root", type=Path, help="a labelled dataset; default: synthetic 240x240x155 phantoms")
    data.add_argument("--cases", type=positive_int, default=4, help="cases to use (and to generate)")
    data.add_argument("--work-dir", type=Path, default=Path("outputs/benchmark/data"), help="phantoms and cache")
    data.add_argument("--patch", type=positive_int, default=128)
    data.add_argument("--batch", type=positive_int, default=2)
    data.add_argument("--samples-per-volume", type=positive_int, nargs="+", default=[1, 8])
    data.add_argument("--augmentation", default="default", help="augmentation preset")
    data.add_argument(
        "--naive-bias-field", action="store_true", help="add TorchIO's (slow) RandomBiasField to the naive pipeline"
    )
    data.add_argument(
        "--step-model", default="linknet3d", choices=sorted(MODELS), help="network the augmentation is compared with"
    )
    data.add_argument("--step-preset", default="paper", choices=PRESETS)
    data.add_argument("--step-mode", default="bf16", choices=list(MODES))
    data.add_argument("--workers", type=positive_int, default=8, help="loader workers for the memory measurement")
    data.add_argument("--queue-length", type=positive_int, default=24)
    data.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    data.add_argument("--jsonl", type=Path, help="append the JSON lines to this file instead of printing them")
    data.set_defaults(run=cmd_data)
    infer = commands.add_parser("infer", help="whole-case sliding-window inference: MONAI vs TorchIO")
    infer.add_argument("--model", required=True, choices=sorted(MODELS))
    infer.add_argument("--preset", default="light", choices=PRESETS)
    infer.add_argument("--shape", type=positive_int, nargs=3, default=[240, 240, 155], metavar=("X", "Y", "Z"))
    infer.add_argument("--roi", type=positive_int, default=128, help="edge of the cubic window (voxels)")
    infer.add_argument("--overlap", type=float, default=0.5, help="fraction of a window shared with its neighbour")
    infer.add_argument("--sw-batch", type=positive_int, default=2, help="windows per network call")
    infer.add_argument("--bf16", action="store_true", help="run the network under bfloat16 autocast")
    infer.add_argument("--mirror", action="store_true", help="average over the 8 flips of the spatial axes")
    infer.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    infer.add_argument("--repeats", type=positive_int, default=3, help="timed runs of each backend")
    infer.add_argument("--jsonl", type=Path, help="append the JSON lines to this file instead of printing them")
    infer.set_defaults(run=cmd_infer)
    report = commands.add_parser("report", help="one table from the --jsonl files of several runs")
    report.add_argument("files", nargs="+", type=Path)
    report.add_argument("--markdown", action="store_true", help="print a markdown table")
    report.add_argument("--peak-tflops", type=float, help="the card's dense bf16 rate, for a %% of peak column")
    report.set_defaults(run=cmd_report, device="cpu")

    args = parser.parse_args(argv)
    if args.command != "report":
        args.device = resolve_device(args.device)
    args.run(args)


if __name__ == "__main__":  # required: the spawned workers import this file
    main()

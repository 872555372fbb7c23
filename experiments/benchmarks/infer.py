"""``python experiments/benchmark.py infer --model arunet3d`` times whole-case sliding-window inference
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
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from benchmarks.common import SEED, add_device_and_output, command_parser, device_name, emit, fmt, show
from tumorseg.cli import positive_int
from tumorseg.models import MODELS, PRESETS, build_model

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
    records = infer_records(setup, result, args.repeats, hardware)
    out = show(
        infer_table(*infer_captions(setup, result["agreement"], args.repeats, hardware), records), records, "backend"
    )
    speed = records[-1]["time_ratio_vs_monai"]
    if speed is not None:
        verdict = (
            f"faster here by {speed:.2f}x"
            if speed >= 1
            else f"slower here by {1 / speed:.2f}x than TorchIO's GridSampler + GridAggregator"
        )
        out.print(f"predict.py uses MONAI's sliding window ({verdict})", highlight=False)
    emit(records, args.jsonl)


def infer_records(setup: InferSetup, result: dict, repeats: int, hardware: str) -> list[dict]:
    """One record per backend: the settings, the times and memory, and their ratios to MONAI's."""
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
        "repeats": repeats,
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
    return records


def infer_captions(setup: InferSetup, compared: dict, repeats: int, hardware: str) -> tuple[str, str]:
    """The table's title and caption: the setting, how memory was measured, and the outputs' agreement."""
    shape = "x".join(map(str, setup.shape))
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
    agree = (
        f"thresholded outputs (logit > 0) agree on {100 * compared['threshold_agreement']:.2f} % of voxels "
        f"(Dice {fmt(compared['threshold_dice'], '.4f')}), argmax on {100 * compared['argmax_agreement']:.2f} %; "
        f"max |logit difference| {compared['max_abs_logit_diff']:.3g}"
        if compared
        else "outputs not compared: a backend failed"
    )
    caption = (
        f"Median of {repeats} runs per backend after 1 warm-up, alternating. TorchIO: GridSampler + "
        f"SubjectsLoader + GridAggregator(overlap_mode='hann'), the closest TorchIO blending to MONAI's Gaussian. "
        f"Peak memory = {memory}. {agree}."
    )
    return title, caption


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = command_parser(commands, "infer", "whole-case sliding-window inference: MONAI vs TorchIO", __doc__)
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--preset", default="light", choices=PRESETS)
    parser.add_argument("--shape", type=positive_int, nargs=3, default=[240, 240, 155], metavar=("X", "Y", "Z"))
    parser.add_argument("--roi", type=positive_int, default=128, help="edge of the cubic window (voxels)")
    parser.add_argument("--overlap", type=float, default=0.5, help="fraction of a window shared with its neighbour")
    parser.add_argument("--sw-batch", type=positive_int, default=2, help="windows per network call")
    parser.add_argument("--bf16", action="store_true", help="run the network under bfloat16 autocast")
    parser.add_argument("--mirror", action="store_true", help="average over the 8 flips of the spatial axes")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs of each backend")
    add_device_and_output(parser)
    parser.set_defaults(run=cmd_infer)

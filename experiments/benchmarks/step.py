"""``python experiments/benchmark.py step --model arunet3d`` times one optimiser step (forward, loss,
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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    SEED,
    add_device_and_output,
    command_parser,
    device_name,
    emit,
    fmt,
    peak_rss_gib,
    run_isolated,
    show,
)
from tumorseg.cli import positive_int
from tumorseg.models import MODELS, PRESETS, build_model

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
    show(step_table(title, caption, records), records, "mode")
    emit(records, args.jsonl)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = command_parser(commands, "step", "time one optimiser step", __doc__)
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--preset", default="light", choices=PRESETS)
    parser.add_argument("--patch", type=positive_int, default=128, help="edge of the cubic input patch (voxels)")
    parser.add_argument("--batch", type=positive_int, default=2)
    parser.add_argument("--in-channels", type=positive_int, default=4)
    parser.add_argument("--out-channels", type=positive_int, default=3)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), help=f"default: {' '.join(DEFAULT_MODES)}")
    parser.add_argument("--compile", action="store_true", help="also run bf16-compile")
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=positive_int, default=3, help="untimed steps first (they cover compilation)")
    add_device_and_output(parser)
    parser.set_defaults(run=cmd_step)

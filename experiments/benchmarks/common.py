"""What the benchmark commands share: the name of the hardware, peak memory, measuring in a
fresh process, the device choice and the output (rich tables, JSON lines)."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

SEED = 0


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


def show(table, records: list[dict], name_key: str) -> Console:
    """Print ``table``, then the first line of the error of each failed record (named by ``name_key``)."""
    out = console()
    out.print(table)
    for r in records:
        if r["error"]:
            out.print(f"[red]{r[name_key]} failed:[/red] {escape(r['error'].splitlines()[0])}", highlight=False)
    return out


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def resolve_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was given but no CUDA device is available.")
    return choice


def command_parser(commands: argparse._SubParsersAction, name: str, summary: str, doc: str) -> argparse.ArgumentParser:
    """The parser of the subcommand ``name``: ``summary`` in the command list, its module's ``doc`` in its help."""
    return commands.add_parser(
        name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_device_and_output(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--jsonl``, the options of every measuring command."""
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--jsonl", type=Path, help="append the JSON lines to this file instead of printing them")

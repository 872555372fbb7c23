"""``python experiments/benchmark.py report FILE.jsonl ...`` prints one table of the ``step``
records of several runs (their ``--jsonl`` files), optionally as markdown and with each rate as a
share of the card's peak (``--peak-tflops``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.table import Table

from benchmarks.common import command_parser, console, fmt


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


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = command_parser(commands, "report", "one table from the --jsonl files of several runs", __doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 rate, for a %% of peak column")
    parser.set_defaults(run=cmd_report, device="cpu")

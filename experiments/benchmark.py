"""Speed and memory benchmarks of the segmentation networks, the input pipeline and inference.

    python experiments/benchmark.py step --model arunet3d     # one optimiser step, in several modes
    python experiments/benchmark.py data                      # the training input pipeline
    python experiments/benchmark.py infer --model arunet3d    # sliding-window inference, MONAI vs TorchIO
    python experiments/benchmark.py export                    # the predictor with PyTorch vs onnxruntime
    python experiments/benchmark.py report FILE.jsonl ...     # one table of several step runs

Each command lives in its own module of ``experiments/benchmarks/`` (``python experiments/benchmark.py
COMMAND --help`` shows its description); this file only dispatches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments/, for the benchmarks package

from benchmarks import data, export_bench, infer, report, step  # noqa: E402
from benchmarks.common import resolve_device  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (step, data, infer, export_bench, report):
        command.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command != "report":
        args.device = resolve_device(args.device)
    args.run(args)


if __name__ == "__main__":  # required: the spawned workers import this file
    main()

"""Command line of ``tumorseg.data`` (``tumorseg-data``, ``python -m tumorseg.data``).

tumorseg-data check ROOT [--no-labels] [--layout NAME] [--convention NAME] [--workers N] [--debug]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tumorseg.cli import add_debug_option, positive_int, prog_name, run_command
from tumorseg.data import check
from tumorseg.data.layouts import CONVENTION_LAYOUTS, LAYOUTS


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit status."""
    # the CPUs this process may use, which in a container can be fewer than the machine has
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser = argparse.ArgumentParser(prog=prog_name("tumorseg.data"), description="BraTS/MSD dataset tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser(
        "check",
        help="read every case of a dataset and report all problems",
        description="Read every case under ROOT once and report the layout, shapes, spacings, label values and "
        "every problem found. Exit status: 0 no problem, 1 problems, 2 ROOT unusable. Files are only read.",
    )
    check_parser.add_argument("root", type=Path, help="dataset folder (case folders up to 2 levels below) or one case")
    check_parser.add_argument("--no-labels", action="store_true", help="accept cases without a label file")
    check_parser.add_argument("--layout", choices=LAYOUTS, help="read the files as this layout instead of detecting it")
    check_parser.add_argument(
        "--convention",
        choices=sorted(CONVENTION_LAYOUTS),
        help="read the label files in this convention instead of the layout's own: brats2024 for BraTS 2024 "
        "post-treatment data (labels 1-4), which is named like 2023's",
    )
    check_parser.add_argument(
        "--workers",
        type=positive_int,
        default=min(4, cpus),
        help=f"processes reading cases in parallel (default: {min(4, cpus)})",
    )
    add_debug_option(check_parser)
    args = parser.parse_args(argv)
    return run_command(
        lambda: check.run(
            args.root,
            require_labels=not args.no_labels,
            layout=args.layout,
            workers=args.workers,
            convention=args.convention,
        ),
        debug=args.debug,
    )


if __name__ == "__main__":
    sys.exit(main())

"""The paper's figures for runs of the paper experiments: per network, Dice loss and Dice score per
epoch (training and validation), one comparison figure of the three, and a table of the final
validation Dice next to the paper's reported scores. Usage:

    python experiments/paper/plot.py RUN_DIR [RUN_DIR ...] --out DIR [--title T]

RUN_DIR is a training run directory (for a multirun, outputs/<...>/multiruns/<date>/<n>).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/, for plot_runs

from plot_runs import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main([*sys.argv[1:], "--reference", "paper"]))

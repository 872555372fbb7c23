"""The paper's figures for runs of the paper experiments: per network, the paper's figure
(``<name>_paper.png``: Dice loss and the paper's Dice score, 1 - Dice loss, per epoch, training on the
epoch's last batch as the paper drew it and validation, with the BraTS region Dice beside them) and
the project's loss/score figure, one comparison figure of the three, and a table of the final
validation Dice and the paper's score next to the paper's reported scores (plot_runs.py with
``--reference paper``). Usage:

    python experiments/paper/plot.py RUN_DIR [RUN_DIR ...] --out DIR [--title T]

RUN_DIR is a training run directory (for a multirun, outputs/<...>/multiruns/<date>/<n>).
"""

import sys

from tumorseg.runs.curves import main

if __name__ == "__main__":
    raise SystemExit(main([*sys.argv[1:], "--reference", "paper"]))

"""Figures and a results table of finished training runs, side by side: ``tumorseg.runs.curves``.

python experiments/plot_runs.py RUN_DIR [RUN_DIR ...] --out DIR [--reference paper] [--title T]
"""

import sys

from tumorseg.runs.curves import main

if __name__ == "__main__":
    sys.exit(main())

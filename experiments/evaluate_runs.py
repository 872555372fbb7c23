"""Score finished training runs the same way, per fold, per model and per ensemble, in the source
geometry: ``tumorseg.runs.scoring``.

    python experiments/evaluate_runs.py RUN [RUN ...] --out DIR [--ensemble "NAME=PATTERN"]...
"""

import sys

from tumorseg.runs.scoring import main

if __name__ == "__main__":
    sys.exit(main())

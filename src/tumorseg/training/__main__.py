"""``python -m tumorseg.training``: the training command (``tumorseg-train``), ``tumorseg.training.cli``."""

import sys

from tumorseg.training.cli import main

if __name__ == "__main__":
    sys.exit(main())

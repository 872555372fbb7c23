"""``python -m tumorseg.predict``: the prediction command (``tumorseg-predict``), ``tumorseg.predict.cli``."""

import sys

from tumorseg.predict.cli import main

if __name__ == "__main__":
    sys.exit(main())

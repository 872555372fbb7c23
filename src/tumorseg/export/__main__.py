"""``python -m tumorseg.export``: the export command (``tumorseg-export``), ``tumorseg.export.cli``."""

import sys

from tumorseg.export.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m tumorseg.data``: see ``tumorseg.data.cli``."""

import sys

from tumorseg.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
